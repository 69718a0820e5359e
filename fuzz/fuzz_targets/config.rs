//! The config file: TOML into the `Config` tree (unknown keys refused),
//! then `validate`. A file that loads prints back (`--print-config`) as
//! TOML that loads into the same tree.
#![no_main]

use assetd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match toml::from_str::<Config>(text) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let printed = toml::to_string(&config)
        .unwrap_or_else(|e| panic!("a loaded config does not print: {e}\n{config:#?}"));
    let again = toml::from_str::<Config>(&printed)
        .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
    assert_eq!(again, config, "printed as:\n{printed}");
    // Resolves paths and the admin group; reads, never writes.
    if let Ok(valid) = config.validate() {
        let _ = valid.sources.policy().describe();
    }
});
