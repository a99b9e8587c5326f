//! Issue 20 on the wire: `GET /api/v1/routing/model-rules`, the routing rules by model
//! (`routing.model_rules`, in the order they are tried) and every endpoint's model map
//! (`endpoints[].model_map`, in the order its entries are tried: exact names, then globs from
//! the most specific). Read from the configuration in force, so a hot reload shows at once.

use std::time::SystemTime;

use ccf_config::Config;
use serde::Serialize;

use crate::http_util::rfc3339;

/// The answer of `GET /api/v1/routing/model-rules`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelRoutingDto<'a> {
    rules: Vec<ModelRuleDto<'a>>,
    endpoints: Vec<EndpointModelMapDto<'a>>,
    timestamp: String,
}

/// One `routing.model_rules[]` entry.
#[derive(Debug, Serialize)]
struct ModelRuleDto<'a> {
    index: usize,
    #[serde(rename = "match")]
    pattern: &'a str,
    group: &'a str,
    only: bool,
}

/// One endpoint's `model_map` (possibly empty).
#[derive(Debug, Serialize)]
struct EndpointModelMapDto<'a> {
    endpoint: &'a str,
    group: &'a str,
    model_map: Vec<ModelMapEntryDto<'a>>,
}

/// One `model_map` entry.
#[derive(Debug, Serialize)]
struct ModelMapEntryDto<'a> {
    #[serde(rename = "match")]
    pattern: &'a str,
    model: &'a str,
    glob: bool,
}

impl<'a> ModelRoutingDto<'a> {
    /// The rules and maps of `config`.
    pub(crate) fn new(config: &'a Config) -> Self {
        ModelRoutingDto {
            rules: config
                .routing
                .model_rules
                .iter()
                .enumerate()
                .map(|(index, rule)| ModelRuleDto {
                    index,
                    pattern: &rule.pattern,
                    group: &rule.group,
                    only: rule.only,
                })
                .collect(),
            endpoints: config
                .endpoints
                .iter()
                .map(|endpoint| EndpointModelMapDto {
                    endpoint: &endpoint.name,
                    group: &endpoint.group,
                    model_map: endpoint
                        .model_map
                        .entries()
                        .map(|(pattern, model)| ModelMapEntryDto {
                            pattern,
                            model,
                            glob: ccf_config::is_glob(pattern),
                        })
                        .collect(),
                })
                .collect(),
            timestamp: rfc3339(SystemTime::now()),
        }
    }
}
