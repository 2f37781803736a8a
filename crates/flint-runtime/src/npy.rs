//! Reading NumPy `.npy` files of floats (little-endian f32, f64 or f16, C order), for pixel
//! values prepared outside flint. Every header field is checked; errors name the file.

use std::path::Path;

use crate::{Result, RuntimeError};

/// An array read from a `.npy` file, as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

fn err(path: &Path, m: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Request(format!("{}: {m}", path.display()))
}

/// The value of `key` in a header dict such as `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`, as written (up to the next top-level comma).
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(rest[..end].trim())
}

/// Read `path`.
pub fn read(path: &Path) -> Result<Array> {
    crate::check_regular(path).map_err(|e| RuntimeError::io(path, e))?;
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a .npy file (bad magic)"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(path, format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| err(path, "header runs past the end"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| err(path, "header is not text"))?;
    let descr = field(header, "descr").ok_or_else(|| err(path, "header has no 'descr'"))?.trim_matches(['\'', '"']);
    let size = match descr {
        "<f4" => 4,
        "<f8" => 8,
        "<f2" => 2,
        other => return Err(err(path, format!("dtype {other:?}; flint reads little-endian floats (<f4, <f8, <f2)"))),
    };
    match field(header, "fortran_order") {
        Some("False") => {}
        Some(other) => return Err(err(path, format!("fortran_order is {other}; flint reads C order"))),
        None => return Err(err(path, "header has no 'fortran_order'")),
    }
    let shape_text = field(header, "shape").ok_or_else(|| err(path, "header has no 'shape'"))?;
    let shape: Vec<usize> = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err(path, format!("shape {shape_text} is not a tuple of sizes"))))
        .collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err(path, "shape overflows"))?;
    let body = &bytes[end..];
    if n.checked_mul(size) != Some(body.len()) {
        return Err(err(
            path,
            format!("shape {shape:?} of {descr} needs {} bytes, the file holds {}", n.saturating_mul(size), body.len()),
        ));
    }
    let data = match size {
        4 => body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        8 => body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        _ => body.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    };
    Ok(Array { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn reads_floats_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!("flint-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let body: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &body)).unwrap();
        let a = read(&p).unwrap();
        assert_eq!((a.shape, a.data[5]), (vec![2, 3], 6.0));
        std::fs::write(&p, npy("{'descr': '<i8', 'fortran_order': False, 'shape': (6,), }", &body)).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("<i8"));
        std::fs::write(&p, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", &body)).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("needs 32 bytes"));
        std::fs::write(&p, npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &body)).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("fortran_order"));
        std::fs::write(&p, b"\x93NUMPY\x01\x00\xff\xff{").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("past the end"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
