//! A checkpoint's `config.json` as params: parsed, every field looked up and turned
//! into a constant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moec_compiler::config::HfConfig;

const FIELDS: &[&str] = &[
    "hidden_size",
    "num_local_experts",
    "rope_scaling.factor",
    "text_config.hidden_size",
    "model_type",
    "layer_types",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = HfConfig::parse("config.json", text) {
        for field in FIELDS {
            let _ = config.model_type();
            if let Some((_, v)) = config.lookup(field) {
                let _ = moec_compiler::config::to_const(v);
            }
        }
    }
});
