//! Hugging Face model directories: `config.json` and safetensors weights (`model.safetensors`, or
//! shards listed by `model.safetensors.index.json`), read into memory and parsed by the safetensors
//! crate's header parser. Every tensor a model asks for is checked for presence, shape and dtype
//! (f32, f16 or bf16), and every config field for presence and type; errors name the file and
//! the tensor or field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::{Result, RuntimeError};

/// One tensor's place in a mapped file.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

/// A model directory with its config and weights (read into memory, not mapped: see
/// [`crate::gguf::Gguf::open`]).
pub struct HfDir {
    /// The directory.
    pub dir: PathBuf,
    /// config.json.
    pub config: Value,
    /// The directory's other files (tokenizer, processor configs).
    pub files: Files,
    /// Each safetensors file's path and bytes.
    weights: Vec<(PathBuf, Vec<u8>)>,
    tensors: HashMap<String, Entry>,
}

impl std::fmt::Debug for HfDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfDir").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish()
    }
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model(format!("{}: {message}", path.display()))
}

/// Read and parse a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    crate::check_regular(path).map_err(|e| RuntimeError::io(path, e))?;
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, e))?;
    parse_json(path, &text)
}

fn parse_json(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| model_err(path, format!("not valid JSON: {e}")))
}

/// Where a model directory's files come from: a directory on disk, or files held in memory
/// under their names (what a browser page fetched), with a name standing for the directory in
/// errors.
#[derive(Debug)]
pub enum Files {
    /// A directory.
    Dir(PathBuf),
    /// Files by name (no directories), and the name of the whole.
    Memory {
        /// Stands for the directory in errors and [`crate::model::Model::path`].
        name: PathBuf,
        /// Each file's bytes by its name.
        files: HashMap<String, Vec<u8>>,
    },
}

impl Files {
    /// The files of directory `dir`.
    pub fn dir(dir: &Path) -> Files {
        Files::Dir(dir.to_path_buf())
    }

    /// What stands for the directory.
    pub fn root(&self) -> &Path {
        match self {
            Files::Dir(d) => d,
            Files::Memory { name, .. } => name,
        }
    }

    /// The path of file `name`, for errors.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Whether file `name` is there.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Files::Dir(d) => d.join(name).is_file(),
            Files::Memory { files, .. } => files.contains_key(name),
        }
    }

    /// File `name`'s bytes (taken out of memory: each file is read once).
    fn take(&mut self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name);
        match self {
            Files::Dir(_) => {
                crate::check_regular(&path).map_err(|e| RuntimeError::io(&path, e))?;
                std::fs::read(&path).map_err(|e| RuntimeError::io(&path, e))
            }
            Files::Memory { files, .. } => files.remove(name).ok_or_else(|| model_err(&path, "is missing")),
        }
    }

    /// File `name` as text.
    pub fn read_string(&self, name: &str) -> Result<String> {
        let path = self.path(name);
        match self {
            Files::Dir(_) => {
                crate::check_regular(&path).map_err(|e| RuntimeError::io(&path, e))?;
                std::fs::read_to_string(&path).map_err(|e| RuntimeError::io(&path, e))
            }
            Files::Memory { files, .. } => {
                let bytes = files.get(name).ok_or_else(|| model_err(&path, "is missing"))?;
                String::from_utf8(bytes.clone()).map_err(|_| model_err(&path, "is not UTF-8 text"))
            }
        }
    }

    /// File `name` parsed as JSON.
    pub fn read_json(&self, name: &str) -> Result<Value> {
        parse_json(&self.path(name), &self.read_string(name)?)
    }
}

impl HfDir {
    /// Open `dir`: parse config.json and map the weights, checking each file's header.
    pub fn open(dir: &Path) -> Result<HfDir> {
        HfDir::load(Files::dir(dir))
    }

    /// [`HfDir::open`] on files from anywhere (the safetensors are taken out of `files`; the
    /// rest stay there, in [`HfDir::files`], for the tokenizer and processor to read).
    pub fn load(mut files: Files) -> Result<HfDir> {
        let dir = files.root().to_path_buf();
        if !files.has("config.json") {
            return Err(model_err(&dir, "no config.json: not a Hugging Face model directory"));
        }
        let config = files.read_json("config.json")?;
        let index = files.path("model.safetensors.index.json");
        let names: Vec<String> = if files.has("model.safetensors.index.json") {
            let v = files.read_json("model.safetensors.index.json")?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| model_err(&index, "no \"weight_map\" object"))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, f) in map {
                let f = f
                    .as_str()
                    .ok_or_else(|| model_err(&index, format!("weight_map[{tensor:?}] is not a file name")))?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(model_err(&index, format!("weight_map[{tensor:?}] = {f:?} leaves the directory")));
                }
                if !names.iter().any(|x| x == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names
        } else if files.has("model.safetensors") {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(model_err(&dir, "neither model.safetensors nor model.safetensors.index.json"));
        };
        let mut weights = Vec::new();
        for name in names {
            let bytes = files.take(&name)?;
            weights.push((files.path(&name), bytes));
        }
        let mut hf = HfDir::from_parts(&dir, config, weights)?;
        hf.files = files;
        Ok(hf)
    }

    /// A directory from what [`HfDir::open`] reads: the parsed config and each safetensors
    /// file's path and bytes, whose headers are checked here (the fuzz target's entry point).
    pub fn from_parts(dir: &Path, config: Value, files: Vec<(PathBuf, Vec<u8>)>) -> Result<HfDir> {
        let mut tensors = HashMap::new();
        for (i, (path, bytes)) in files.iter().enumerate() {
            let (n, meta) =
                SafeTensors::read_metadata(bytes).map_err(|e| model_err(path, format!("bad safetensors: {e}")))?;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let entry =
                    Entry { file: i, dtype: info.dtype, shape: info.shape.clone(), start: 8 + n + a, end: 8 + n + b };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(model_err(path, format!("tensor {name:?} is stored twice")));
                }
            }
        }
        Ok(HfDir { dir: dir.to_path_buf(), config, weights: files, tensors, files: Files::dir(dir) })
    }

    /// The names of the tensors the weights hold, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether the weights hold `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| model_err(&self.dir, format!("tensor {name:?} is missing from the weights")))
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// Tensor `name` as f32, which must have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let (path, map) = &self.weights[e.file];
        if e.shape != shape {
            return Err(model_err(path, format!("tensor {name:?} has shape {:?}, expected {shape:?}", e.shape)));
        }
        let bytes = &map[e.start..e.end];
        let n: usize = shape.iter().product();
        let out: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(model_err(path, format!("tensor {name:?} is {other:?}; flint reads F32, F16 and BF16")));
            }
        };
        if out.len() != n {
            return Err(model_err(path, format!("tensor {name:?} holds {} values for shape {shape:?}", out.len())));
        }
        Ok(out)
    }

    /// The dtype most of the weights are stored in (what the model "is").
    pub fn main_dtype(&self) -> Dtype {
        let mut counts: Vec<(Dtype, usize)> = Vec::new();
        for e in self.tensors.values() {
            match counts.iter_mut().find(|(d, _)| *d == e.dtype) {
                Some(c) => c.1 += e.end - e.start,
                None => counts.push((e.dtype, e.end - e.start)),
            }
        }
        counts.into_iter().max_by_key(|&(_, n)| n).map_or(Dtype::F32, |(d, _)| d)
    }
}

/// Typed access to a JSON config with errors naming the file and the field.
pub struct Config<'a> {
    /// The file, for errors.
    pub path: PathBuf,
    /// The object.
    pub value: &'a Value,
    /// Dotted path of `value` within the file, for errors ("" at the top).
    pub at: String,
}

impl<'a> Config<'a> {
    /// The top of `value`, read from `path`.
    pub fn new(path: PathBuf, value: &'a Value) -> Config<'a> {
        Config { path, value, at: String::new() }
    }

    fn field_name(&self, key: &str) -> String {
        if self.at.is_empty() { key.to_string() } else { format!("{}.{key}", self.at) }
    }

    fn err(&self, key: &str, what: &str) -> RuntimeError {
        model_err(&self.path, format!("field {:?} {what}", self.field_name(key)))
    }

    /// A nested object.
    pub fn object(&self, key: &str) -> Result<Config<'a>> {
        match self.value.get(key) {
            Some(v) if v.is_object() => Ok(Config { path: self.path.clone(), value: v, at: self.field_name(key) }),
            Some(_) => Err(self.err(key, "is not an object")),
            None => Err(self.err(key, "is missing")),
        }
    }

    /// A non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.value.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err(key, &format!("is {v}, not a non-negative integer"))),
            None => Err(self.err(key, "is missing")),
        }
    }

    /// A non-negative integer, or `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.value.get(key).is_some_and(|v| !v.is_null()) { self.usize(key) } else { Ok(default) }
    }

    /// A number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.value.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, &format!("is {v}, not a number"))),
            None => Err(self.err(key, "is missing")),
        }
    }

    /// A number, or `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        if self.value.get(key).is_some_and(|v| !v.is_null()) { self.f64(key) } else { Ok(default) }
    }

    /// A boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, &format!("is {v}, not a boolean"))),
        }
    }

    /// A string, or `default` when absent.
    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, &format!("is {v}, not a string"))),
        }
    }

    /// An error about `key` saying `what`.
    pub fn error(&self, key: &str, what: &str) -> RuntimeError {
        self.err(key, what)
    }
}
