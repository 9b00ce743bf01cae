//! Params from a checkpoint's config.json: which field a param takes (its name,
//! `from` paths, `text_config`), precedence (default < config.json < `--set`),
//! where each value came from, and the rendered errors for a config that does
//! not fit the spec.

use moec_compiler::config::HfConfig;
use moec_compiler::lower::{lower, Const, Lowered, ParamInputs, ParamSource};

const SPEC: &str = r#"model m {
  param model_type          = "mixtral"
  param hidden_size         = 4096
  param num_local_experts   = 8 from "num_local_experts", "ffn_config.moe_num_experts"
  param rope_theta          = 10000.0 from "rope_parameters.rope_theta", "rope_theta"
  param rms_norm_eps        = 1e-5
  param layer_types         = ["full_attention"]
  param mlp_only_layers     = []
  param hidden_act          = "silu"
  param tie_word_embeddings = false
  input x: f32[tokens, hidden_size]
  output x
}"#;

fn inputs(config: &str, sets: &[(&str, &str)]) -> ParamInputs {
    ParamInputs {
        sets: sets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        config: Some(HfConfig::parse("ckpt/config.json", config).unwrap()),
        ..ParamInputs::default()
    }
}

fn lower_with(spec: &str, inputs: &ParamInputs) -> Result<Lowered, String> {
    let ast = moec_grammar::parse(spec).unwrap();
    lower(&ast, inputs).map_err(|d| d.render("spec.moe", spec))
}

/// Each param as `name = value (source)`.
fn listing(l: &Lowered) -> Vec<String> {
    l.params
        .iter()
        .map(|(n, v, s)| {
            let s = match s {
                ParamSource::Default => "default".to_string(),
                ParamSource::Set => "--set".to_string(),
                ParamSource::Config(path) => format!("config {path}"),
            };
            format!("{n} = {v} ({s})")
        })
        .collect()
}

#[test]
fn params_take_config_fields_and_set_wins() {
    let config = r#"{
      "model_type": "mixtral",
      "hidden_size": 32,
      "ffn_config": {"moe_num_experts": 4},
      "rope_theta": 1000000,
      "rms_norm_eps": null,
      "text_config": {"layer_types": ["sliding_attention", "full_attention"], "hidden_act": "gelu"},
      "mlp_only_layers": [0, 2],
      "tie_word_embeddings": true,
      "vocab_size": 32000
    }"#;
    let l = lower_with(SPEC, &inputs(config, &[("tie_word_embeddings", "false")])).unwrap();
    assert_eq!(
        listing(&l),
        [
            "model_type = \"mixtral\" (default)",
            "hidden_size = 32 (config hidden_size)",
            "num_local_experts = 4 (config ffn_config.moe_num_experts)",
            "rope_theta = 1000000.0 (config rope_theta)",
            "rms_norm_eps = 1e-5 (default)",
            "layer_types = [\"sliding_attention\", \"full_attention\"] (config text_config.layer_types)",
            "mlp_only_layers = [0, 2] (config mlp_only_layers)",
            "hidden_act = \"gelu\" (config text_config.hidden_act)",
            "tie_word_embeddings = false (--set)",
        ]
    );
    assert_eq!(
        l.graph.value_type(l.graph.outputs[0].1).to_string(),
        "f32[tokens, 32]"
    );
}

#[test]
fn the_first_from_path_present_wins() {
    let config = r#"{"num_local_experts": 16, "ffn_config": {"moe_num_experts": 4},
                     "rope_parameters": {"rope_theta": 500000.0}, "rope_theta": 1.0}"#;
    let l = lower_with(SPEC, &inputs(config, &[])).unwrap();
    let value = |name: &str| l.params.iter().find(|p| p.0 == name).unwrap().1.clone();
    assert_eq!(value("num_local_experts"), Const::Int(16));
    assert_eq!(value("rope_theta"), Const::Float(500000.0));
}

#[test]
fn set_strings_take_the_raw_text_and_lists_spec_syntax() {
    let sets = [
        ("hidden_act", "gelu_pytorch_tanh"),
        ("layer_types", r#"["a", "b"]"#),
        ("mlp_only_layers", "[1, 3]"),
    ];
    let l = lower_with(SPEC, &inputs("{}", &sets)).unwrap();
    let shown = listing(&l);
    assert!(shown.contains(&"hidden_act = \"gelu_pytorch_tanh\" (--set)".to_string()));
    assert!(shown.contains(&"layer_types = [\"a\", \"b\"] (--set)".to_string()));
    assert!(shown.contains(&"mlp_only_layers = [1, 3] (--set)".to_string()));
    // A param that `--set` decides does not read the config's field at all.
    let bad = r#"{"hidden_size": "wide"}"#;
    assert!(lower_with(SPEC, &inputs(bad, &[("hidden_size", "8")])).is_ok());
}

fn error(spec: &str, config: &str, sets: &[(&str, &str)]) -> String {
    match lower_with(spec, &inputs(config, sets)) {
        Ok(_) => panic!("lowered against {config}"),
        Err(rendered) => rendered,
    }
}

#[test]
fn a_value_of_another_type_is_an_error_at_the_param() {
    insta::assert_snapshot!("wrong_type", error(SPEC, r#"{"hidden_size": "4096"}"#, &[]));
    insta::assert_snapshot!(
        "wrong_element_type",
        error(SPEC, r#"{"text_config": {"layer_types": [0, 1]}}"#, &[])
    );
    insta::assert_snapshot!(
        "float_for_integer",
        error(SPEC, r#"{"hidden_size": 4096.5}"#, &[])
    );
    insta::assert_snapshot!(
        "object_value",
        error(SPEC, r#"{"rope_theta": {"base": 10000}}"#, &[])
    );
}

#[test]
fn a_checkpoint_of_another_model_type_is_an_error() {
    insta::assert_snapshot!(
        "model_type_mismatch",
        error(SPEC, r#"{"model_type": "qwen2_moe"}"#, &[])
    );
}

#[test]
fn malformed_config_json_names_the_file_and_position() {
    let e = HfConfig::parse(
        "ckpt/config.json",
        "{\n  \"hidden_size\": 32\n  \"x\": 1\n}",
    )
    .unwrap_err();
    insta::assert_snapshot!("malformed_json", e.to_string());
}

#[test]
fn without_a_config_params_keep_their_defaults() {
    let l = lower_with(SPEC, &ParamInputs::default()).unwrap();
    assert!(l.params.iter().all(|p| p.2 == ParamSource::Default));
}
