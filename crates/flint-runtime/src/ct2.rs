//! A checked reader of CTranslate2's `model.bin` (binary versions 5 and 6): the spec's name and
//! revision, its variables (name, shape, data type, bytes) and aliases. Every length and shape
//! is checked against the bytes the file holds before it is used, and the counts of variables
//! and aliases against [`MAX_VARIABLES`]; errors name the file and the variable.
//!
//! Layout (little-endian): `u32 version`, `string spec name`, `u32 revision`, `u32 count`, then
//! per variable `string name`, `u8 rank`, `u32 dims[rank]`, `u8 dtype`, `u32 bytes`, the data;
//! then `u32 aliases` and per alias `string alias`, `string target`. A string is a `u16` length
//! that counts a trailing NUL, then its bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::{Result, RuntimeError};

/// Element types of CTranslate2 variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ct2Type {
    /// 32-bit float.
    F32,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl Ct2Type {
    fn from_id(id: u8) -> Option<Ct2Type> {
        Some(match id {
            0 => Ct2Type::F32,
            1 => Ct2Type::I8,
            2 => Ct2Type::I16,
            3 => Ct2Type::I32,
            4 => Ct2Type::F16,
            5 => Ct2Type::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Ct2Type::I8 => 1,
            Ct2Type::I16 | Ct2Type::F16 | Ct2Type::Bf16 => 2,
            Ct2Type::F32 | Ct2Type::I32 => 4,
        }
    }
}

/// One variable: its shape, type and where its bytes lie in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: Ct2Type,
    /// Byte range in the file.
    pub bytes: Range<usize>,
}

/// A CTranslate2 model file read into memory.
pub struct Ct2File {
    path: PathBuf,
    data: Vec<u8>,
    /// The spec's name (`WhisperSpec`).
    pub spec: String,
    /// The spec's revision.
    pub revision: u32,
    vars: HashMap<String, Variable>,
    aliases: HashMap<String, String>,
}

/// Most variables a file may declare.
pub const MAX_VARIABLES: usize = 1 << 16;

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn err(&self, m: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Model(format!("{}: {m} (at byte {})", self.path.display(), self.at))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(
                self.err(format!("cut short reading {what}: {n} bytes wanted, {} left", self.data.len() - self.at))
            );
        };
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = usize::from(self.u16(what)?);
        let bytes = self.take(n, what)?;
        let Some((&0, text)) = bytes.split_last() else {
            return Err(self.err(format!("{what} is not NUL-terminated")));
        };
        String::from_utf8(text.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
}

impl Ct2File {
    /// Read and index `path`.
    pub fn open(path: &Path) -> Result<Ct2File> {
        crate::check_regular(path).map_err(|e| RuntimeError::io(path, e))?;
        let data = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
        Ct2File::parse(path, data)
    }

    /// Index a file held in memory (`path` is what errors call it).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Ct2File> {
        let mut c = Cursor { data: &data, at: 0, path };
        let version = c.u32("the binary version")?;
        if !(5..=6).contains(&version) {
            return Err(
                c.err(format!("binary version {version}; flint reads CTranslate2 model files of versions 5 and 6"))
            );
        }
        let spec = c.string("the spec name")?;
        let revision = c.u32("the spec revision")?;
        let count = c.u32("the variable count")? as usize;
        if count > MAX_VARIABLES {
            return Err(c.err(format!("{count} variables is over flint's limit of {MAX_VARIABLES}")));
        }
        let mut vars = HashMap::with_capacity(count);
        for i in 0..count {
            let name = c.string(&format!("variable {i}'s name"))?;
            let rank = usize::from(c.u8(&format!("{name}'s rank"))?);
            if rank > 8 {
                return Err(c.err(format!("{name}: rank {rank} (at most 8)")));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(c.u32(&format!("{name}'s shape"))? as usize);
            }
            let id = c.u8(&format!("{name}'s type"))?;
            let dtype = Ct2Type::from_id(id).ok_or_else(|| c.err(format!("{name}: unknown data type {id}")))?;
            let bytes = c.u32(&format!("{name}'s byte count"))? as usize;
            let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if elems.and_then(|n| n.checked_mul(dtype.size())) != Some(bytes) {
                return Err(c.err(format!(
                    "{name}: {bytes} bytes do not hold shape {shape:?} of {dtype:?} ({} bytes)",
                    elems.and_then(|n| n.checked_mul(dtype.size())).map_or("too many".into(), |n| n.to_string())
                )));
            }
            let start = c.at;
            c.take(bytes, &format!("{name}'s data"))?;
            if vars.insert(name.clone(), Variable { shape, dtype, bytes: start..start + bytes }).is_some() {
                return Err(c.err(format!("variable {name} appears twice")));
            }
        }
        let mut aliases = HashMap::new();
        let n = c.u32("the alias count")? as usize;
        if n > MAX_VARIABLES {
            return Err(c.err(format!("{n} aliases is over flint's limit of {MAX_VARIABLES}")));
        }
        for i in 0..n {
            let alias = c.string(&format!("alias {i}"))?;
            let target = c.string(&format!("alias {alias}'s target"))?;
            if !vars.contains_key(&target) {
                return Err(c.err(format!("alias {alias} names {target}, which is not a variable")));
            }
            aliases.insert(alias, target);
        }
        if c.at != data.len() {
            return Err(c.err(format!("{} bytes after the last alias", data.len() - c.at)));
        }
        Ok(Ct2File { path: path.to_path_buf(), spec, revision, vars, aliases, data })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A variable by name or alias.
    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.vars.get(name).or_else(|| self.aliases.get(name).and_then(|t| self.vars.get(t)))
    }

    /// Names of every variable (not aliases), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    fn need(&self, name: &str) -> Result<&Variable> {
        self.get(name).ok_or_else(|| RuntimeError::Model(format!("{}: no variable {name}", self.path.display())))
    }

    /// A float variable of `shape` as f32 values.
    pub fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let v = self.need(name)?;
        if v.shape != shape {
            return Err(RuntimeError::Model(format!(
                "{}: {name} has shape {:?}, the model's config wants {shape:?}",
                self.path.display(),
                v.shape
            )));
        }
        let b = &self.data[v.bytes.clone()];
        Ok(match v.dtype {
            Ct2Type::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
            Ct2Type::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Ct2Type::Bf16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            t => {
                return Err(RuntimeError::Model(format!(
                    "{}: {name} is {t:?}; flint reads float weights (f32, f16, bf16), not quantized ones",
                    self.path.display()
                )));
            }
        })
    }

    /// An integer scalar (a spec's option such as `encoder/num_heads`).
    pub fn scalar(&self, name: &str) -> Result<i64> {
        let v = self.need(name)?;
        let b = &self.data[v.bytes.clone()];
        let value = match (v.dtype, b.len()) {
            (Ct2Type::I8, 1) => i64::from(b[0] as i8),
            (Ct2Type::I16, 2) => i64::from(i16::from_le_bytes([b[0], b[1]])),
            (Ct2Type::I32, 4) => i64::from(i32::from_le_bytes(b.try_into().expect("4"))),
            _ => {
                return Err(RuntimeError::Model(format!(
                    "{}: {name} is not an integer scalar ({:?} {:?})",
                    self.path.display(),
                    v.dtype,
                    v.shape
                )));
            }
        };
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(u16::try_from(s.len() + 1).unwrap().to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    /// A version-6 file with a 2x3 f16 matrix, an i16 scalar and an alias.
    fn file() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(6u32.to_le_bytes());
        string(&mut b, "TestSpec");
        b.extend(3u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        string(&mut b, "m/weight");
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.push(4);
        b.extend(12u32.to_le_bytes());
        for v in [1.0f32, -2.0, 0.5, 3.0, 0.0, -0.25] {
            b.extend(half::f16::from_f32(v).to_le_bytes());
        }
        string(&mut b, "m/heads");
        b.push(0);
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(6i16.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        string(&mut b, "m/tied");
        string(&mut b, "m/weight");
        b
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let f = Ct2File::parse(Path::new("t.bin"), file()).unwrap();
        assert_eq!((f.spec.as_str(), f.revision), ("TestSpec", 3));
        assert_eq!(f.f32s("m/tied", &[2, 3]).unwrap(), [1.0, -2.0, 0.5, 3.0, 0.0, -0.25]);
        assert_eq!(f.scalar("m/heads").unwrap(), 6);
        assert_eq!(f.names(), ["m/heads", "m/weight"]);
        let e = f.f32s("m/weight", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("t.bin") && e.contains("m/weight") && e.contains("[2, 3]"), "{e}");
    }

    #[test]
    fn every_truncation_and_bad_field_is_refused_by_name() {
        let good = file();
        for cut in 0..good.len() {
            let e = Ct2File::parse(Path::new("cut.bin"), good[..cut].to_vec());
            assert!(e.is_err(), "a file cut at {cut} bytes was accepted");
            assert!(e.err().unwrap().to_string().starts_with("cut.bin: "));
        }
        // The matrix's byte count (after version, name, revision, count, name, rank, dims, type).
        let at = 4 + 11 + 4 + 4 + 11 + 1 + 8 + 1;
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
        let e = Ct2File::parse(Path::new("b.bin"), bad).err().unwrap().to_string();
        assert!(e.contains("m/weight") && e.contains("13 bytes"), "{e}");
        let mut bad = good.clone();
        bad[at - 1] = 9;
        let e = Ct2File::parse(Path::new("b.bin"), bad).err().unwrap().to_string();
        assert!(e.contains("m/weight") && e.contains("unknown data type 9"), "{e}");
        let mut bad = good.clone();
        bad[0] = 7;
        assert!(Ct2File::parse(Path::new("b.bin"), bad).err().unwrap().to_string().contains("version 7"));
        let mut bad = good;
        bad.push(0);
        assert!(Ct2File::parse(Path::new("b.bin"), bad).err().unwrap().to_string().contains("after the last alias"));
    }
}
