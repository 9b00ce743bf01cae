//! A Hugging Face checkpoint's `config.json`, the values a spec's params take
//! (`param NAME` reads the field NAME, `param NAME = D from "a.b"` the nested field
//! `b` of `a`). A path is looked up in the top-level object, then in `text_config`,
//! where multimodal checkpoints keep their language model's fields.

use crate::lower::Const;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed `config.json`: a JSON object, and the file it came from.
#[derive(Clone, Debug)]
pub struct HfConfig {
    path: PathBuf,
    root: Map<String, Value>,
}

/// Why a config could not be read. Every variant names the file.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    NotAnObject {
        path: PathBuf,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "{}: cannot read the config: {error}", path.display())
            }
            ConfigError::Json {
                path,
                line,
                column,
                message,
            } => write!(
                f,
                "{}:{line}:{column}: invalid JSON: {message}",
                path.display()
            ),
            ConfigError::NotAnObject { path } => write!(
                f,
                "{}: a config.json holds one JSON object `{{ ... }}`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl HfConfig {
    /// The config of a checkpoint: `path` is a directory (its `config.json`; `None` when
    /// it has none, as a directory of weights alone) or a config file.
    pub fn open(path: &Path) -> Result<Option<HfConfig>, ConfigError> {
        let file = if path.is_dir() {
            let file = path.join("config.json");
            if !file.exists() {
                return Ok(None);
            }
            file
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|error| ConfigError::Read {
            path: file.clone(),
            error,
        })?;
        HfConfig::parse(file, &text).map(Some)
    }

    /// Parses config text; `path` is what errors call it.
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<HfConfig, ConfigError> {
        let path = path.into();
        match serde_json::from_str(text) {
            Ok(Value::Object(root)) => Ok(HfConfig { path, root }),
            Ok(_) => Err(ConfigError::NotAnObject { path }),
            Err(e) => {
                let full = e.to_string();
                // serde_json ends its message with " at line L column C": said once, up front.
                let message = match full.rfind(" at line ") {
                    Some(i) => full[..i].to_string(),
                    None => full,
                };
                Err(ConfigError::Json {
                    path,
                    line: e.line(),
                    column: e.column(),
                    message,
                })
            }
        }
    }

    /// The file the config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The top-level `model_type` (`"mixtral"`), if it is a string.
    pub fn model_type(&self) -> Option<&str> {
        self.root.get("model_type").and_then(Value::as_str)
    }

    /// The value at a dotted path (`"rope_parameters.rope_theta"`) in the top-level
    /// object, else in `text_config`, with the path where it was found. A null counts
    /// as absent.
    pub fn lookup(&self, dotted: &str) -> Option<(String, &Value)> {
        if let Some(v) = at_path(&self.root, dotted) {
            return Some((dotted.to_string(), v));
        }
        let text = self.root.get("text_config")?.as_object()?;
        at_path(text, dotted).map(|v| (format!("text_config.{dotted}"), v))
    }
}

/// The non-null value at `dotted` in `root`.
fn at_path<'v>(root: &'v Map<String, Value>, dotted: &str) -> Option<&'v Value> {
    let mut parts = dotted.split('.');
    let mut v = root.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    (!v.is_null()).then_some(v)
}

/// A config value as a constant: integers stay integers, other numbers are floats,
/// arrays are lists of one type (integers among numbers become numbers). `Err` says
/// what no param can hold: an object, a null in a list, a list of mixed types.
pub fn to_const(v: &Value) -> Result<Const, &'static str> {
    match v {
        Value::Bool(b) => Ok(Const::Bool(*b)),
        Value::Number(n) => Ok(match n.as_i64() {
            Some(i) => Const::Int(i),
            None => Const::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Ok(Const::Str(s.clone())),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|i| match i {
                    Value::Null => Err("a list holding null"),
                    other => to_const(other),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Const::list(items).map_err(|_| "a list of mixed types")
        }
        Value::Object(_) => Err("an object"),
        Value::Null => Err("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HfConfig {
        HfConfig::parse("config.json", text).unwrap()
    }

    #[test]
    fn lookup_reads_nested_paths_then_text_config() {
        let c = config(
            r#"{"hidden_size": 8, "rope_parameters": {"rope_theta": 1e6},
                "text_config": {"hidden_size": 99, "num_experts": 4}, "eos": null}"#,
        );
        assert_eq!(c.lookup("hidden_size").unwrap().0, "hidden_size");
        assert_eq!(
            c.lookup("num_experts").unwrap().0,
            "text_config.num_experts"
        );
        assert_eq!(
            c.lookup("rope_parameters.rope_theta").unwrap().1,
            &Value::from(1e6)
        );
        assert!(c.lookup("eos").is_none());
        assert!(c.lookup("rope_parameters.nope").is_none());
        assert!(c.lookup("hidden_size.x").is_none());
    }

    #[test]
    fn json_values_become_constants() {
        let c = |t: &str| to_const(&serde_json::from_str(t).unwrap());
        assert_eq!(c("3"), Ok(Const::Int(3)));
        assert_eq!(c("2.5"), Ok(Const::Float(2.5)));
        assert_eq!(c("1e6"), Ok(Const::Float(1e6)));
        assert_eq!(c("\"yarn\""), Ok(Const::Str("yarn".into())));
        assert_eq!(
            c("[1, 2.5]"),
            Ok(Const::List(vec![Const::Float(1.0), Const::Float(2.5)]))
        );
        assert_eq!(c("[1, \"a\"]"), Err("a list of mixed types"));
        assert_eq!(c("[null]"), Err("a list holding null"));
        assert_eq!(c("{}"), Err("an object"));
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let e = HfConfig::parse("ckpt/config.json", "{\n  \"a\": 1,\n}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ckpt/config.json:3:1: invalid JSON: trailing comma"
        );
        let e = HfConfig::parse("ckpt/config.json", "[1]").unwrap_err();
        assert!(e.to_string().starts_with("ckpt/config.json: "), "{e}");
        let dir = std::env::temp_dir().join("moec-config-test-empty-dir");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(HfConfig::open(&dir).unwrap().is_none());
        let e = HfConfig::open(&dir.join("missing.json")).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
    }
}
