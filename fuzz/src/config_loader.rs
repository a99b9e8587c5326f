//! Oracle for the `config_loader` target: `ccf_config::ConfigLoader` (YAML parsing, `${VAR}` /
//! `${VAR:-default}` interpolation, `CCF_*` environment overrides, inheritance and validation)
//! and `Config::from_yaml_str` on arbitrary text must return `Ok` or `Err`, never panic, and
//! every error must render to a non-empty message.
//!
//! Input format: everything before the first NUL byte is the YAML document (invalid UTF-8 is
//! replaced); after it, `NAME=VALUE` lines are the environment (both for interpolation and for
//! `CCF_` overrides; a line without `=` is a variable set to the empty string).

use ccf_config::{Config, ConfigLoader};

/// Runs one input through the oracle; panics on a property violation.
pub fn check(data: &[u8]) {
    let (yaml, env) = match data.iter().position(|&byte| byte == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let yaml = String::from_utf8_lossy(yaml).into_owned();
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();

    let loaded = ConfigLoader::new()
        .yaml_str(yaml.clone())
        .env_vars(env)
        .load();
    match loaded {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
            let _ = format!("{:?}", loaded.config);
        }
        Err(error) => {
            assert!(!error.to_string().is_empty(), "an empty config error");
            let _ = format!("{error:?}");
        }
    }
    match Config::from_yaml_str(&yaml) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(error) => assert!(!error.to_string().is_empty(), "an empty config error"),
    }
}
