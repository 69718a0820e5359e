//! The config file: TOML into the `Config` tree (unknown keys refused),
//! then `validate`. A file that loads prints back (`--print-config`,
//! `Config::to_toml`) as TOML that loads into the same tree.
#![no_main]

use assetd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::parse(text) else {
        return;
    };
    let printed = config.to_toml();
    let again = Config::parse(&printed)
        .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
    assert_eq!(again, config, "printed as:\n{printed}");
    // Resolves paths and groups; reads, never writes. Not the CA file: a
    // path such as /dev/zero would read for ever (the bundle's PEM is
    // rustls' parser, not ours).
    config.sources.ca_file = None;
    if let Ok(valid) = config.validate() {
        let _ = valid.sources.policy().describe();
    }
});
