//! The artifact an executable built by `moec build` embeds: deserialized, format
//! checked, graph re-verified, kernels matched against a linked-name table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moec_runtime::aot::Artifact;

fuzz_target!(|data: &[u8]| {
    let _ = Artifact::load(data, &["matmul_f32_t1_k8_n8", "epilogue"]);
});
