//! `flint logits` on a Qwen2.5-VL model: transformers' patch rows (`pixel_values`, written as
//! .npy) and `--image-grid-thw` give transformers' logits; grids that do not match the rows, or
//! grids for a model without patch images, are refused.

use std::path::Path;
use std::process::Command;

const FLINT: &str = env!("CARGO_BIN_EXE_flint");

fn tensor(bytes: &[u8], k: &str) -> Vec<u8> {
    safetensors::SafeTensors::deserialize(bytes).unwrap().tensor(k).unwrap().data().to_vec()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A little-endian f32 .npy file of `shape`.
fn write_npy(path: &Path, data: &[f32], shape: &[usize]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, out).unwrap();
}

#[test]
fn qwen2_5_vl_logits_from_patch_rows_equal_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2.5-vl");
    let exp = std::fs::read(root.join("tiny.expected.safetensors")).unwrap();
    let pixels = f32s(&tensor(&exp, "pixel_values"));
    let ids: Vec<String> = tensor(&exp, "input_ids")
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()).to_string())
        .collect();
    let dir = std::env::temp_dir().join(format!("flint-qwen-logits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("pixel_values.npy");
    write_npy(&npy, &pixels, &[pixels.len() / 1176, 1176]);
    let out = dir.join("logits.safetensors");
    let model = root.join("tiny");
    let run = |grids: &str| {
        Command::new(FLINT)
            .args(["logits", "--model"])
            .arg(&model)
            .args(["--token-ids", &ids.join(","), "--pixel-values"])
            .arg(&npy)
            .args(["--image-grid-thw", grids, "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let r = run("1,12,18;1,2,64");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = f32s(&tensor(&std::fs::read(&out).unwrap(), "logits"));
    let want = f32s(&tensor(&exp, "logits"));
    let err: f64 = got.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
        / want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>();
    assert!(got.len() == want.len() && err <= 1e-5, "logits NMSE {err:e}");
    for (grids, want) in [("1,12,18", "patch rows must be f32 [216, row]"), ("2,12,18;1,2,64", "is not 1,h,w")] {
        let r = run(grids);
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && e.contains(want), "{grids}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
