//! The real process environment, through `figment::Jail` (which sets and restores variables
//! under a global lock, and runs in a temporary directory). Kept in its own test binary so no
//! other test observes the jail's variables or working directory.

// `Jail::expect_with` fixes the closure's error type to `figment::Error`, which is large.
#![allow(clippy::result_large_err)]

use ccf_config::{Config, ConfigLoader};

#[test]
fn process_environment_overrides_and_expands() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "config.yaml",
            "server:\n  port: 8087\nendpoints:\n  - name: a\n    url: https://a.example\n    api-key: ${CCF_TEST_API_KEY}\n",
        )?;
        jail.set_env("CCF_SERVER__PORT", "9000");
        jail.set_env("CCF_TEST_API_KEY", "sk-from-env");

        let loaded = ConfigLoader::new()
            .file("config.yaml")
            .load()
            .map_err(|error| error.to_string())?;
        assert_eq!(loaded.config.server.port, 9000);
        let key = loaded.config.endpoints[0]
            .api_key
            .as_ref()
            .map(|k| k.expose().to_string());
        assert_eq!(key.as_deref(), Some("sk-from-env"));
        // CCF_TEST_API_KEY also looks like an override of `test_api_key`: reported, not fatal.
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            ["environment: unknown key `test_api_key` (ignored)"]
        );
        Ok(())
    });
}

#[test]
fn from_yaml_str_expands_variables_but_ignores_overrides() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("CCF_SERVER__PORT", "9000");
        jail.set_env("UPSTREAM", "https://up.example");
        let config = Config::from_yaml_str("endpoints:\n  - name: a\n    url: ${UPSTREAM}\n")
            .map_err(|error| error.to_string())?;
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.endpoints[0].url.as_str(), "https://up.example/");
        Ok(())
    });
}

#[test]
fn a_missing_relative_file_is_reported_as_given() {
    figment::Jail::expect_with(|_jail| {
        let error = ConfigLoader::new().file("missing.yaml").load().unwrap_err();
        assert_eq!(
            error.to_string(),
            "missing.yaml: configuration file not found"
        );
        Ok(())
    });
}
