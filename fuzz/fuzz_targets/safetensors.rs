//! Safetensors headers and bodies, as weights (`WeightSource`, binding) and as run
//! inputs (`read_tensors`): errors, never panics or huge allocations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moec_compiler::ir::WeightDecl;
use moec_runtime::weights::{bind, WeightSource};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("moec-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = moec_runtime::io::read_tensors(&path);
    if let Ok(source) = WeightSource::open(&path) {
        let names: Vec<String> = source.tensor_names().map(String::from).collect();
        let decls: Vec<WeightDecl> = names
            .iter()
            .take(4)
            .enumerate()
            .map(|(i, n)| WeightDecl {
                key: format!("w{i}"),
                pattern: format!("w{i}"),
                tensor: n.clone(),
                expert_slice: (i % 2 == 1).then_some(1),
                transposed: i % 3 == 1,
                rows: None,
                columns: None,
                shape: vec![2, 3],
                storage: None,
                span: Default::default(),
            })
            .collect();
        let _ = bind(&decls, &source);
    }
});
