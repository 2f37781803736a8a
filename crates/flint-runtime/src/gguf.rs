//! GGUF reader: header, metadata, tensor infos and data, read into memory. Every count, length,
//! offset and shape is checked against the file before it is used, and errors name the file and
//! the field or tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flint_ref::quant::BlockFormat;

/// Why a GGUF file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct GgufError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the field or tensor.
    pub message: String,
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    U64(u64),
    /// Signed integer (i8, i16, i32, i64).
    I64(i64),
    /// Float (f32, f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// A block format.
    Quant(BlockFormat),
}

impl TensorType {
    fn from_ggml(id: u32) -> Option<TensorType> {
        match id {
            0 => Some(TensorType::F32),
            1 => Some(TensorType::F16),
            30 => Some(TensorType::BF16),
            _ => BlockFormat::from_ggml_type(id).map(TensorType::Quant),
        }
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "f32",
            TensorType::F16 => "f16",
            TensorType::BF16 => "bf16",
            TensorType::Quant(f) => f.name(),
        }
    }

    /// Values per block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        match self {
            TensorType::Quant(f) => f.block_elems(),
            _ => 1,
        }
    }

    /// Bytes holding `n` values.
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            TensorType::F32 => 4 * n,
            TensorType::F16 | TensorType::BF16 => 2 * n,
            TensorType::Quant(f) => f.bytes_for(n),
        }
    }
}

/// Name of ggml type ids flint does not run, for error messages.
fn ggml_type_name(id: u32) -> String {
    let names = [
        "f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k", "q3_k", "q4_k", "q5_k",
        "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16",
        "i32", "i64", "f64", "iq1_m", "bf16",
    ];
    names.get(id as usize).map_or_else(|| format!("type {id}"), |n| format!("{n} (type {id})"))
}

/// One tensor's description.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous one (a `[n, k]` row-major matrix is
    /// `dims = [k, n]`).
    pub dims: Vec<usize>,
    /// Element type.
    pub ty: TensorType,
    /// Offset of the data from the start of the file.
    pub offset: usize,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Rows and row length of the tensor seen as a matrix: `(product of dims[1..], dims[0])`.
    pub fn matrix(&self) -> (usize, usize) {
        (self.dims.iter().skip(1).product(), self.dims[0])
    }
}

/// A GGUF file: its metadata and tensor table over the file's bytes.
pub struct Gguf {
    path: PathBuf,
    map: Vec<u8>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Deepest array nesting accepted in metadata.
const MAX_DEPTH: u32 = 4;

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            format!(
                "{}: needs {n} bytes at offset {}, past the end of the file ({} bytes)",
                what(),
                self.pos,
                self.data.len()
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// A count whose items take at least `min_size` bytes each: it cannot exceed what is left.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, String> {
        let n = self.u64(what)?;
        if n > (self.remaining() / min_size.max(1)) as u64 {
            return Err(format!("{}: count {n} cannot fit in the {} bytes left", what(), self.remaining()));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{}: string is not UTF-8", what()))
    }

    fn value(&mut self, ty: u32, depth: u32, what: &dyn Fn() -> String) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.take(1, what)?[0])),
            1 => Value::I64(i64::from(self.take(1, what)?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2")))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2")))),
            4 => Value::U64(u64::from(self.u32(what)?)),
            5 => Value::I64(i64::from(self.u32(what)? as i32)),
            6 => Value::F64(f64::from(f32::from_bits(self.u32(what)?))),
            7 => match self.take(1, what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{}: bool byte {b}", what())),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{}: arrays nested deeper than {MAX_DEPTH}", what()));
                }
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(format!("{}: unknown array element type {other}", what())),
                };
                let n = self.count(min, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(format!("{}: unknown value type {other}", what())),
        })
    }
}

impl Gguf {
    /// Open and check a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| GgufError { path: path.clone(), message };
        crate::check_regular(&path).map_err(|e| err(format!("cannot open: {e}")))?;
        // Read, not mapped: a file truncated or rewritten while flint reads it then gives a short
        // read or stale bytes, which the parser's checks catch, where a map would kill the
        // process with SIGBUS. The weights are uploaded from this buffer once at load.
        let bytes = std::fs::read(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(path.clone(), bytes).map_err(err)
    }

    /// Parse a GGUF image held in memory; `name` stands for the file in errors (the fuzz target
    /// and tests use this).
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        let path = name.into();
        Self::parse(path.clone(), bytes).map_err(|message| GgufError { path, message })
    }

    fn parse(path: PathBuf, map: Vec<u8>) -> Result<Gguf, String> {
        let mut c = Cursor { data: &map, pos: 0 };
        let magic = c.take(4, &|| "magic".into())?;
        if magic != MAGIC {
            return Err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"));
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
        }
        // A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes, a key/value at least 8 + 4 + 1.
        let n_tensors = c.count(32, &|| "tensor_count".into())?;
        let n_kv = c.count(13, &|| "metadata_kv_count".into())?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key {i}"))?;
            let what = || format!("metadata {key:?}");
            let ty = c.u32(&what)?;
            let value = c.value(ty, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata {key:?} appears twice"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => return Err(format!("general.alignment {v:?} is not a power of two up to 65536")),
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor {i} name"))?;
            let what = || format!("tensor {name:?}");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(format!("tensor {name:?} has {n_dims} dimensions (1 to 4 supported)"));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&what)?;
                if d == 0 || d > 1 << 40 {
                    return Err(format!("tensor {name:?} has dimension {d}"));
                }
                // On wasm32 a usize has 32 bits: a dimension past it is too large to hold.
                dims.push(usize::try_from(d).map_err(|_| format!("tensor {name:?} has dimension {d}"))?);
            }
            let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n as u64 <= 1 << 40);
            let Some(numel) = numel else {
                return Err(format!("tensor {name:?} shape {dims:?} is absurdly large"));
            };
            let type_id = c.u32(&what)?;
            let ty = TensorType::from_ggml(type_id).ok_or_else(|| {
                format!("tensor {name:?} has type {}, which flint does not support", ggml_type_name(type_id))
            })?;
            if !dims[0].is_multiple_of(ty.block_elems()) {
                return Err(format!(
                    "tensor {name:?}: rows of {} values are not whole {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block_elems()
                ));
            }
            let offset = c.u64(&what)?;
            if offset % alignment as u64 != 0 {
                return Err(format!("tensor {name:?} offset {offset} is not aligned to {alignment}"));
            }
            infos.push((name, dims, ty, offset, ty.bytes_for(numel)));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let data_len = map.len().saturating_sub(data_start);
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = BTreeMap::new();
        for (i, (name, dims, ty, offset, size)) in infos.into_iter().enumerate() {
            let end = offset.checked_add(size as u64).filter(|&e| e <= data_len as u64);
            if end.is_none() {
                return Err(format!(
                    "tensor {name:?} ({size} bytes at data offset {offset}) runs past the end of the file (data section {data_len} bytes)"
                ));
            }
            if by_name.insert(name.clone(), i).is_some() {
                return Err(format!("tensor {name:?} appears twice"));
            }
            tensors.push(TensorInfo { name, dims, ty, offset: data_start + offset as usize, size });
        }
        Ok(Gguf { path, map, version, metadata, tensors, by_name })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tensor's description by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.size]
    }

    fn err(&self, message: String) -> GgufError {
        GgufError { path: self.path.clone(), message }
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| self.err(format!("metadata {key:?} is missing")))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| self.err(format!("metadata {key:?} is {v:?}, expected a string")))
    }

    /// A non-negative integer metadata value.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.err(format!("metadata {key:?} is {v:?}, expected a non-negative integer")))
    }

    /// A numeric metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key)?;
        v.as_f64().ok_or_else(|| self.err(format!("metadata {key:?} is {v:?}, expected a number")))
    }

    /// A tensor by name, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| self.err(format!("tensor {name:?} is missing")))
    }

    /// Check that tensor `name` exists with `dims` (ggml order) and return it.
    pub fn require_dims(&self, name: &str, dims: &[usize]) -> Result<&TensorInfo, GgufError> {
        let t = self.require(name)?;
        if t.dims != dims {
            return Err(self.err(format!("tensor {name:?} has dims {:?}, expected {dims:?}", t.dims)));
        }
        Ok(t)
    }

    /// A tensor as f32 values (plain floats converted, blocks dequantized).
    pub fn to_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let b = self.data(t);
        Ok(match t.ty {
            TensorType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            TensorType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TensorType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TensorType::Quant(f) => flint_ref::quant::dequantize(f, b, t.numel())
                .map_err(|e| self.err(format!("tensor {:?}: {e}", t.name)))?,
        })
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> GgufError {
        self.err(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid GGUF image with one f32 tensor.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "b");
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    fn open_bytes(bytes: &[u8]) -> Result<Gguf, GgufError> {
        let dir = std::env::temp_dir().join(format!("flint-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.gguf", bytes.len() ^ bytes.iter().map(|&b| b as usize).sum::<usize>()));
        std::fs::write(&path, bytes).unwrap();
        let r = Gguf::open(&path);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn reads_a_tiny_file() {
        let g = open_bytes(&tiny()).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get("tokens").unwrap().as_array().unwrap().len(), 2);
        let t = g.require_dims("w", &[2, 3]).unwrap();
        assert_eq!(t.matrix(), (3, 2));
        assert_eq!(g.to_f32(t).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let e = g.require_dims("w", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("\"w\" has dims [2, 3]"), "{e}");
    }

    #[test]
    fn rejects_broken_files_with_clear_errors() {
        let good = tiny();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GGML".iter().chain(&good[4..]).copied().collect(), "not a GGUF file"),
            (good[..good.len() - 4].to_vec(), "runs past the end of the file"),
            (good[..30].to_vec(), "tensor_count: count 1 cannot fit in the 14 bytes left"),
            (good[..60].to_vec(), "past the end of the file"),
            (
                {
                    let mut b = good.clone();
                    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                },
                "cannot fit",
            ),
            (
                {
                    let mut b = good.clone();
                    b[4..8].copy_from_slice(&9u32.to_le_bytes());
                    b
                },
                "version 9",
            ),
        ];
        for (bytes, want) in cases {
            let e = open_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
            assert!(e.contains(".gguf"), "the error names the file: {e}");
        }
        // An unknown tensor type.
        let mut b = tiny();
        let pos = find(&b, b"w").unwrap() + 1 + 4 + 16;
        b[pos..pos + 4].copy_from_slice(&17u32.to_le_bytes());
        let e = open_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("iq2_xs (type 17), which flint does not support"), "{e}");
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).rposition(|w| w == needle)
    }
}
