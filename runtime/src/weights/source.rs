//! `WeightSource`: a checkpoint on disk, one safetensors file or a sharded one
//! (`model.safetensors.index.json` plus its shards). It knows every tensor name and which file
//! holds it; a shard is mapped and its header parsed only when a tensor in it is first asked
//! for, so a partial download or a damaged shard that nothing needs is no problem.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::error::{WeightError, WeightErrorKind};
use crate::file::{MappedFile, OpenError};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// A checkpoint: tensor names, and the files that hold them.
pub struct WeightSource {
    /// The file a user names the checkpoint by: the `.safetensors` file or the index.
    path: PathBuf,
    /// Each tensor name and the index of its file in `files`.
    names: BTreeMap<String, usize>,
    files: Vec<Shard>,
    sharded: bool,
}

struct Shard {
    path: PathBuf,
    mapped: OnceLock<MappedFile>,
}

/// The part of the Hugging Face index format moec reads; `metadata` is ignored.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl WeightSource {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a directory holding
    /// either (`model.safetensors` is preferred when both exist). A single file's header is read
    /// now; a sharded checkpoint's shards are not touched until `bind` needs them.
    pub fn open(path: &Path) -> Result<WeightSource, WeightError> {
        let metadata =
            fs::metadata(path).map_err(|e| WeightError::new(path, WeightErrorKind::Io(e)))?;
        if metadata.is_dir() {
            let single = path.join(SINGLE_FILE);
            let index = path.join(INDEX_FILE);
            if single.is_file() {
                WeightSource::open_single(single)
            } else if index.is_file() {
                WeightSource::open_index(index)
            } else {
                Err(WeightError::new(path, WeightErrorKind::NoCheckpoint))
            }
        } else if path.extension().is_some_and(|ext| ext == "json") {
            WeightSource::open_index(path.to_path_buf())
        } else {
            WeightSource::open_single(path.to_path_buf())
        }
    }

    fn open_single(path: PathBuf) -> Result<WeightSource, WeightError> {
        let mapped = MappedFile::open(&path).map_err(|e| WeightError::open(&path, e))?;
        let names = mapped.names().into_iter().map(|name| (name, 0)).collect();
        let files = vec![Shard {
            path: path.clone(),
            mapped: OnceLock::from(mapped),
        }];
        Ok(WeightSource {
            path,
            names,
            files,
            sharded: false,
        })
    }

    fn open_index(path: PathBuf) -> Result<WeightSource, WeightError> {
        let bad_index = |why: String| WeightError::new(&path, WeightErrorKind::BadIndex(why));
        let text = fs::read(&path).map_err(|e| WeightError::new(&path, WeightErrorKind::Io(e)))?;
        let index: Index = serde_json::from_slice(&text).map_err(|e| bad_index(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut names = BTreeMap::new();
        for (tensor, shard) in index.weight_map {
            // Shards live beside the index; refuse names that would reach elsewhere.
            let mut parts = Path::new(&shard).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            ) {
                return Err(bad_index(format!(
                    "shard name \"{shard}\" (for tensor \"{tensor}\") is not a file name"
                )));
            }
            let id = *shard_ids.entry(shard).or_insert_with_key(|shard| {
                files.push(Shard {
                    path: dir.join(shard),
                    mapped: OnceLock::new(),
                });
                files.len() - 1
            });
            names.insert(tensor, id);
        }
        Ok(WeightSource {
            path,
            names,
            files,
            sharded: true,
        })
    }

    /// The file that names this checkpoint: the `.safetensors` file or the index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name in the checkpoint, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    pub(crate) fn tensor_count(&self) -> usize {
        self.names.len()
    }

    /// Which file holds `tensor`, if any.
    pub(crate) fn locate(&self, tensor: &str) -> Option<usize> {
        self.names.get(tensor).copied()
    }

    pub(crate) fn file_path(&self, file: usize) -> &Path {
        &self.files[file].path
    }

    /// The mapped file, opening it on first use. A failure is not cached: it is reported by
    /// the caller, which does not ask again within one `bind`.
    pub(crate) fn file(&self, file: usize) -> Result<&MappedFile, WeightError> {
        let shard = &self.files[file];
        if let Some(mapped) = shard.mapped.get() {
            return Ok(mapped);
        }
        let mapped = MappedFile::open(&shard.path).map_err(|e| match e {
            OpenError::Io(e) if self.sharded && e.kind() == io::ErrorKind::NotFound => {
                WeightError::new(
                    &shard.path,
                    WeightErrorKind::MissingShard {
                        index: self.path.clone(),
                    },
                )
            }
            e => WeightError::open(&shard.path, e),
        })?;
        Ok(shard.mapped.get_or_init(|| mapped))
    }
}
