//! Image preprocessing as transformers' Idefics3 image processor does it (the PIL backend,
//! `Idefics3ImageProcessorPil`): decode, RGB, resize so the longest edge is `size`, resize up to
//! multiples of the tile, cut into tiles plus the whole image resized to one tile, rescale by
//! 1/255 and normalise by mean and std; and the prompt expansion of each `<image>` into the
//! tokens the processor writes for its tiles.
//!
//! Also the fixed-size processors of SigLIP-style towers ([`FixedSizeProcessor`]; Gemma 3's
//! `Gemma3ImageProcessorPil` without Pan & Scan): resize to one size with PIL's bilinear
//! filter, rescale and normalise; and Qwen2-VL's ([`PatchProcessor`], `Qwen2VLImageProcessorPil`,
//! as Qwen2.5-VL uses it): resize keeping the aspect to multiples of patch x merge within a pixel
//! budget with PIL's bicubic filter, rescale, normalise, and lay the patches out as the tower
//! reads them.
//!
//! Every resize is PIL's (Lanczos, a = 3, for Idefics3; bilinear for Gemma 3; bicubic for
//! Qwen2-VL) on 8-bit pixels,
//! reproduced here step by step: filter support widened by the scale when shrinking,
//! coefficients normalised and rounded to 22-bit fixed point, the horizontal pass before the
//! vertical one with the intermediate rounded to 8 bits. The pixels therefore match the
//! processors' exactly (tests/tests/vision.rs checks this on three images per filter); a float
//! resampler would differ by a level here and there.

use std::path::Path;

use serde_json::Value;

use crate::hf::Config;
use crate::{Result, RuntimeError};

/// Images larger than this many pixels are refused before decoding (a 16k x 16k photo is
/// 256 megapixels; the processor's own cap is 4096 on the longest edge after its first resize).
pub const MAX_PIXELS: u64 = 64 << 20;
/// Images with a side longer than this are refused before decoding: a 1-pixel-high strip under
/// the pixel limit would still size the resampler's tables by its length.
pub const MAX_SIDE: u32 = 16384;

/// An 8-bit RGB image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB bytes.
    pub data: Vec<u8>,
}

impl Rgb {
    /// An image of `width x height` from its RGB bytes, checked.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Rgb> {
        let img = Rgb { width, height, data };
        img.check()?;
        Ok(img)
    }

    fn check(&self) -> Result<()> {
        let n = self.width.checked_mul(self.height).and_then(|p| p.checked_mul(3));
        if self.width == 0 || self.height == 0 || n != Some(self.data.len()) {
            return Err(RuntimeError::Request(format!(
                "a {}x{} RGB image needs {} bytes, it has {}",
                self.width,
                self.height,
                n.map_or("too many".into(), |n| n.to_string()),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// The largest image file flint reads: room for an uncompressed image at [`MAX_PIXELS`] (a BMP
/// of 4 bytes per pixel) and its headers.
pub const MAX_FILE_BYTES: u64 = 4 * MAX_PIXELS + (1 << 20);

/// Decode an image file (PNG, JPEG, GIF, WebP, BMP) to RGB, refusing empty images and images
/// over [`MAX_PIXELS`] or with a side over [`MAX_SIDE`], and files over [`MAX_FILE_BYTES`].
pub fn load(path: &Path) -> Result<Rgb> {
    crate::check_regular(path).map_err(|e| RuntimeError::io(path, e))?;
    let len = std::fs::metadata(path).map_err(|e| RuntimeError::io(path, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(RuntimeError::Request(format!(
            "{}: {len} bytes is over flint's limit of {MAX_FILE_BYTES} bytes for an image file",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    decode(path, &bytes)
}

/// A reader of the image in `bytes`, its format guessed from them.
pub(crate) fn reader(bytes: &[u8]) -> std::io::Result<image::ImageReader<std::io::Cursor<&[u8]>>> {
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()
}

/// Decode an image held in memory (`name` is what errors call it), with [`load`]'s checks: the
/// format is guessed from the bytes, and the size is checked from the header before any pixel
/// is decoded.
pub fn decode(name: &Path, bytes: &[u8]) -> Result<Rgb> {
    let err = |m: String| RuntimeError::Request(format!("{}: {m}", name.display()));
    let reader = || reader(bytes).map_err(|e| RuntimeError::io(name, e));
    let (w, h) = reader()?.into_dimensions().map_err(|e| err(format!("not a readable image: {e}")))?;
    if w == 0 || h == 0 {
        return Err(err(format!("the image is {w}x{h}")));
    }
    if w.max(h) > MAX_SIDE {
        return Err(err(format!("{w}x{h} has a side over flint's limit of {MAX_SIDE} pixels")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(err(format!(
            "{w}x{h} is {} pixels, over flint's limit of {MAX_PIXELS}",
            u64::from(w) * u64::from(h)
        )));
    }
    // The header's size is not the end of it: a GIF frame may be larger than its screen, so the
    // decoder's own limits stay on, set to flint's (and room for 16-bit RGBA at MAX_PIXELS).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(8 * MAX_PIXELS + (1 << 20));
    let mut reader = reader()?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(format!("the image does not decode: {e}")))?;
    if (img.width(), img.height()) != (w, h) {
        return Err(err(format!("the header says {w}x{h}, the pixels are {}x{}", img.width(), img.height())));
    }
    let rgb = img.to_rgb8();
    Ok(Rgb { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
}

/// A resampling filter of PIL's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (2): a triangle of support 1.
    Bilinear,
    /// `Image.BICUBIC` (3): Keys' cubic with a = -0.5, support 2.
    Bicubic,
    /// `Image.LANCZOS` (1): Lanczos with a = 3.
    Lanczos,
}

impl Filter {
    /// The filter of PIL's resample number (`resample` in a processor config).
    pub fn from_pil(resample: u64) -> Option<Filter> {
        match resample {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => lanczos(x),
        }
    }
}

/// Per output position: the first input index and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let f = v * f64::from(1u32 << PRECISION_BITS);
                    (if v < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize with PIL's Lanczos filter on 8-bit channels (see the module docs).
pub fn resize(img: &Rgb, width: usize, height: usize) -> Result<Rgb> {
    resize_with(img, width, height, Filter::Lanczos)
}

/// Resize with PIL's `filter` on 8-bit channels (see the module docs).
pub fn resize_with(img: &Rgb, width: usize, height: usize, filter: Filter) -> Result<Rgb> {
    img.check()?;
    if width == 0 || height == 0 || width.checked_mul(height).is_none_or(|p| p as u64 > 4 * MAX_PIXELS) {
        return Err(RuntimeError::Request(format!("cannot resize to {width}x{height}")));
    }
    Ok(resize_checked(img, width, height, filter))
}

fn resize_checked(img: &Rgb, width: usize, height: usize, filter: Filter) -> Rgb {
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width, filter);
        let mut out = vec![0u8; width * cur.height * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..][..cur.width * 3];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (i, &w) in k.iter().enumerate() {
                        ss = ss.wrapping_add(i32::from(row[(xmin + i) * 3 + c]).wrapping_mul(w));
                    }
                    out[(y * width + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb { width, height: cur.height, data: out };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height, filter);
        let mut out = vec![0u8; cur.width * height * 3];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cur.width * 3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    ss = ss.wrapping_add(i32::from(cur.data[(ymin + i) * cur.width * 3 + x]).wrapping_mul(w));
                }
                out[yy * cur.width * 3 + x] = clip8(ss);
            }
        }
        cur = Rgb { width: cur.width, height, data: out };
    }
    cur
}

/// The processor's settings (`processor_config.json`'s `image_processor`, or
/// `preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    /// The longest edge after the first resize (`size.longest_edge`).
    pub longest_edge: usize,
    /// Tile side (`max_image_size.longest_edge`), the vision encoder's image size.
    pub tile: usize,
    /// Whether large images are cut into tiles plus a global view.
    pub split: bool,
    /// Whether the first resize happens.
    pub resize: bool,
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
    /// Rescale factor (1/255).
    pub rescale: f64,
    /// Image tokens per tile in the prompt.
    pub image_seq_len: usize,
}

fn triple(c: &Config<'_>, key: &str, default: [f64; 3]) -> Result<[f64; 3]> {
    match c.value.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok([0, 1, 2].map(|i| n.as_f64().unwrap_or(default[i]))),
        Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
            Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(default[i])))
        }
        Some(v) => Err(c.error(key, &format!("is {v}, not a number or three numbers"))),
    }
}

/// The first of `names` among `files` that exists, read: its path and JSON.
fn processor_config(files: &crate::Files, names: &[&str]) -> Result<Option<(std::path::PathBuf, Value)>> {
    match names.iter().find(|n| files.has(n)) {
        Some(name) => Ok(Some((files.path(name), files.read_json(name)?))),
        None => Ok(None),
    }
}

/// The image processor's settings in a processor config: its `image_processor` object
/// (processor_config.json), or the whole config (preprocessor_config.json).
fn image_processor(top: Config<'_>) -> Result<Config<'_>> {
    if top.value.get("image_processor").is_some_and(Value::is_object) { top.object("image_processor") } else { Ok(top) }
}

/// What a processor config says of normalising and rescaling (`do_normalize`, `image_mean`,
/// `image_std`, `do_rescale`, `rescale_factor`) over the family's `mean` and `std`:
/// `(mean, std, rescale)`. A zero std is refused.
fn normalisation(c: &Config<'_>, mean: [f64; 3], std: [f64; 3]) -> Result<([f64; 3], [f64; 3], f64)> {
    let (mean, std) = if c.bool_or("do_normalize", true)? {
        (triple(c, "image_mean", mean)?, triple(c, "image_std", std)?)
    } else {
        ([0.0; 3], [1.0; 3])
    };
    if std.contains(&0.0) {
        return Err(c.error("image_std", &format!("is {std:?}: a zero std divides by zero")));
    }
    let rescale = if c.bool_or("do_rescale", true)? { c.f64_or("rescale_factor", 1.0 / 255.0)? } else { 1.0 };
    Ok((mean, std, rescale))
}

/// The config's `resample` filter, or `default`.
fn resample(c: &Config<'_>, default: Filter) -> Result<Filter> {
    match c.value.get("resample").filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(r) => Filter::from_pil(r.as_u64().unwrap_or(u64::MAX)).ok_or_else(|| {
            c.error(
                "resample",
                &format!("is {r}; flint resamples with PIL's Lanczos (1), bilinear (2) and bicubic (3)"),
            )
        }),
    }
}

/// An 8-bit channel value `v` of channel `c` rescaled and normalised, as every processor
/// makes its pixel values.
fn normalised(v: u8, c: usize, rescale: f64, mean: &[f64; 3], std: &[f64; 3]) -> f32 {
    ((f64::from(v) * rescale - mean[c]) / std[c]) as f32
}

impl ImageProcessor {
    /// SmolVLM's settings for a vision encoder of `tile` pixels making `tokens_per_tile` tokens:
    /// longest edge four tiles, splitting on, mean and std 0.5, rescale 1/255.
    pub fn smolvlm(tile: usize, tokens_per_tile: usize) -> ImageProcessor {
        ImageProcessor {
            longest_edge: 4 * tile,
            tile,
            split: true,
            resize: true,
            mean: [0.5; 3],
            std: [0.5; 3],
            rescale: 1.0 / 255.0,
            image_seq_len: tokens_per_tile,
        }
    }

    /// Read the processor settings of a model directory; `tokens_per_tile` is what the model's
    /// config implies, checked against the processor's `image_seq_len` when it has one.
    pub fn from_dir(dir: &Path, tile: usize, tokens_per_tile: usize) -> Result<ImageProcessor> {
        ImageProcessor::from_files(&crate::Files::dir(dir), tile, tokens_per_tile)
    }

    /// [`ImageProcessor::from_dir`] on a model directory's files from anywhere.
    pub fn from_files(files: &crate::Files, tile: usize, tokens_per_tile: usize) -> Result<ImageProcessor> {
        let Some((path, whole)) = processor_config(files, &["processor_config.json", "preprocessor_config.json"])?
        else {
            // No processor files: the SmolVLM defaults for the encoder's tile.
            return Ok(ImageProcessor::smolvlm(tile, tokens_per_tile));
        };
        let top = Config::new(path.clone(), &whole);
        let c = image_processor(Config::new(path.clone(), &whole))?;
        let longest = |key: &str| -> Result<Option<usize>> {
            match c.value.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => Ok(Some(c.object(key)?.usize("longest_edge")?)),
            }
        };
        let max_image = longest("max_image_size")?.unwrap_or(tile);
        if max_image != tile {
            return Err(c.error(
                "max_image_size",
                &format!("has longest_edge {max_image}, but the vision encoder takes {tile}x{tile} images"),
            ));
        }
        let seq = match top.value.get("image_seq_len").or_else(|| whole.get("image_seq_len")) {
            Some(_) => top.usize("image_seq_len")?,
            None => tokens_per_tile,
        };
        if seq != tokens_per_tile {
            return Err(
                top.error("image_seq_len", &format!("is {seq}, but the model makes {tokens_per_tile} tokens per tile"))
            );
        }
        let (mean, std, rescale) = normalisation(&c, [0.5; 3], [0.5; 3])?;
        let p = ImageProcessor {
            longest_edge: longest("size")?.unwrap_or(4 * tile),
            tile,
            split: c.bool_or("do_image_splitting", true)?,
            resize: c.bool_or("do_resize", true)?,
            mean,
            std,
            rescale,
            image_seq_len: seq,
        };
        if p.longest_edge == 0 {
            return Err(c.error("size", "has longest_edge 0"));
        }
        Ok(p)
    }
}

/// What the processor makes of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    /// Tiles `[tiles, 3, tile, tile]`, normalised.
    pub pixels: Vec<f32>,
    /// Number of tiles (rows x cols + 1 with splitting, else 1).
    pub tiles: usize,
    /// Tile rows (0 when the image was not split).
    pub rows: usize,
    /// Tile columns (0 when the image was not split).
    pub cols: usize,
    /// The tiles as 8-bit RGB, before normalisation, in order.
    pub tiles_rgb: Vec<Rgb>,
}

/// Output size when the longest edge becomes `max_len` (even, at least 1), then capped at 4096.
fn longest_edge_size(height: usize, width: usize, max_len: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let (mut h, mut w) = if width >= height {
        let w = max_len;
        let mut h = (w as f64 / aspect) as usize;
        if !h.is_multiple_of(2) {
            h += 1;
        }
        (h, w)
    } else {
        let h = max_len;
        let mut w = (h as f64 * aspect) as usize;
        if !w.is_multiple_of(2) {
            w += 1;
        }
        (h, w)
    };
    h = h.max(1);
    w = w.max(1);
    const MAX_SIDE: usize = 4096;
    let aspect = w as f64 / h as f64;
    if w >= h && w > MAX_SIDE {
        w = MAX_SIDE;
        h = (w as f64 / aspect) as usize;
    } else if h > w && h > MAX_SIDE {
        h = MAX_SIDE;
        w = (h as f64 * aspect) as usize;
    }
    (h.max(1), w.max(1))
}

impl ImageProcessor {
    /// Process one image as the processor does.
    pub fn process(&self, img: &Rgb) -> Result<Processed> {
        img.check()?;
        if self.tile == 0 {
            return Err(RuntimeError::Request("the processor's tile size is 0".into()));
        }
        let resize = |img: &Rgb, w: usize, h: usize| resize_checked(img, w, h, Filter::Lanczos);
        let t = self.tile;
        let mut img = img.clone();
        if self.resize {
            let (h, w) = longest_edge_size(img.height, img.width, self.longest_edge);
            img = resize(&img, w, h);
        }
        let (tiles_rgb, rows, cols) = if self.split {
            // Up to multiples of the tile, keeping the aspect ratio as the processor rounds it
            // (at least one tile, where the processor would fail on a zero side).
            let aspect = img.width as f64 / img.height as f64;
            let (h, w) = if img.width >= img.height {
                let w = img.width.div_ceil(t) * t;
                (((w as f64 / aspect) as usize).div_ceil(t).max(1) * t, w)
            } else {
                let h = img.height.div_ceil(t) * t;
                (h, ((h as f64 * aspect) as usize).div_ceil(t).max(1) * t)
            };
            let img = resize(&img, w, h);
            if h > t || w > t {
                let (rows, cols) = ((h - t) / t + 1, (w - t) / t + 1);
                let mut tiles = Vec::with_capacity(rows * cols + 1);
                for r in 0..rows {
                    for c in 0..cols {
                        let mut data = Vec::with_capacity(t * t * 3);
                        for y in r * t..(r + 1) * t {
                            data.extend_from_slice(&img.data[(y * w + c * t) * 3..][..t * 3]);
                        }
                        tiles.push(Rgb { width: t, height: t, data });
                    }
                }
                tiles.push(resize(&img, t, t));
                (tiles, rows, cols)
            } else {
                (vec![img], 0, 0)
            }
        } else {
            (vec![resize(&img, t, t)], 0, 0)
        };
        let mut pixels = Vec::with_capacity(tiles_rgb.len() * 3 * t * t);
        for tile in &tiles_rgb {
            for c in 0..3 {
                for i in 0..tile.width * tile.height {
                    pixels.push(normalised(tile.data[i * 3 + c], c, self.rescale, &self.mean, &self.std));
                }
            }
        }
        Ok(Processed { tiles: tiles_rgb.len(), pixels, rows, cols, tiles_rgb })
    }
}

/// The processor of a SigLIP-style tower that takes every image at one size (Gemma 3's
/// `Gemma3ImageProcessorPil` with Pan & Scan off): resize to `width` x `height` with PIL's
/// `filter`, rescale, normalise. One image makes one `[3, height, width]` tile.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedSizeProcessor {
    /// Output width.
    pub width: usize,
    /// Output height.
    pub height: usize,
    /// The resampling filter (`resample`).
    pub filter: Filter,
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
    /// Rescale factor (1/255).
    pub rescale: f64,
}

impl FixedSizeProcessor {
    /// Read `preprocessor_config.json` (or `processor_config.json`'s `image_processor`) of a
    /// model directory: `size` (`height` and `width`, or `shortest_edge` for a square),
    /// `resample`, `image_mean`, `image_std`, `rescale_factor` and the `do_*` switches, with
    /// Gemma 3's defaults (bilinear, mean and std 0.5). Pan & Scan is refused when asked for.
    pub fn from_dir(dir: &Path, default_side: usize) -> Result<FixedSizeProcessor> {
        FixedSizeProcessor::from_files(&crate::Files::dir(dir), default_side)
    }

    /// [`FixedSizeProcessor::from_dir`] on a model directory's files from anywhere.
    pub fn from_files(files: &crate::Files, default_side: usize) -> Result<FixedSizeProcessor> {
        let mut p = FixedSizeProcessor {
            width: default_side,
            height: default_side,
            filter: Filter::Bilinear,
            mean: [0.5; 3],
            std: [0.5; 3],
            rescale: 1.0 / 255.0,
        };
        let Some((path, whole)) = processor_config(files, &["preprocessor_config.json", "processor_config.json"])?
        else {
            return Ok(p);
        };
        let c = image_processor(Config::new(path, &whole))?;
        if c.bool_or("do_pan_and_scan", false)? {
            return Err(c.error("do_pan_and_scan", "is true; flint runs Gemma 3's processor without Pan & Scan"));
        }
        if c.bool_or("do_resize", true)? && c.value.get("size").is_some_and(|v| !v.is_null()) {
            let size = c.object("size")?;
            if size.value.get("shortest_edge").is_some() {
                let side = size.usize("shortest_edge")?;
                (p.width, p.height) = (side, side);
            } else {
                (p.width, p.height) = (size.usize("width")?, size.usize("height")?);
            }
        }
        p.filter = resample(&c, p.filter)?;
        (p.mean, p.std, p.rescale) = normalisation(&c, p.mean, p.std)?;
        if p.width == 0 || p.height == 0 || p.width.max(p.height) > MAX_SIDE as usize {
            return Err(c.error("size", &format!("is {}x{}: not a usable size (1 to {MAX_SIDE})", p.width, p.height)));
        }
        Ok(p)
    }

    /// The image resized (8-bit, before normalisation).
    pub fn resized(&self, img: &Rgb) -> Result<Rgb> {
        resize_with(img, self.width, self.height, self.filter)
    }

    /// `[3, height, width]`, normalised.
    pub fn process(&self, img: &Rgb) -> Result<Vec<f32>> {
        let r = self.resized(img)?;
        let plane = self.width * self.height;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in r.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = normalised(px[c], c, self.rescale, &self.mean, &self.std);
            }
        }
        Ok(out)
    }
}

/// Qwen2-VL's processor (`Qwen2VLImageProcessorPil`, which Qwen2.5-VL uses): the image resized
/// keeping its aspect so both sides are multiples of `patch * merge` and its pixels within
/// `[min_pixels, max_pixels]` ([`PatchProcessor::smart_resize`]), with PIL's bicubic filter;
/// rescaled and normalised (CLIP's mean and std); cut into `patch`-sized patches, each repeated
/// `temporal` times (a still image is a clip of identical frames), in the order the tower reads
/// them: the `merge x merge` patches that become one token are consecutive.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchProcessor {
    /// Fewest pixels after resizing (`min_pixels`, or `size.shortest_edge`).
    pub min_pixels: usize,
    /// Most pixels after resizing (`max_pixels`, or `size.longest_edge`).
    pub max_pixels: usize,
    /// Patch side (`patch_size`).
    pub patch: usize,
    /// Patches per side merged into one token (`merge_size`).
    pub merge: usize,
    /// Frames per patch (`temporal_patch_size`).
    pub temporal: usize,
    /// The resampling filter (`resample`).
    pub filter: Filter,
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
    /// Rescale factor (1/255).
    pub rescale: f64,
}

/// What [`PatchProcessor`] makes of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Patches {
    /// `[grid_h * grid_w, 3 * temporal * patch * patch]`, normalised.
    pub pixels: Vec<f32>,
    /// Patch rows and columns.
    pub grid: (usize, usize),
    /// The resized image (8-bit, before normalisation).
    pub resized: Rgb,
}

impl PatchProcessor {
    /// Qwen2-VL's defaults: 56x56 to 28x28x1280 pixels, patches of 14 merged 2x2, 2 frames,
    /// bicubic, CLIP's mean and std.
    pub fn qwen2_vl() -> PatchProcessor {
        PatchProcessor {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch: 14,
            merge: 2,
            temporal: 2,
            filter: Filter::Bicubic,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
            rescale: 1.0 / 255.0,
        }
    }

    /// Read `preprocessor_config.json` of a model directory over [`PatchProcessor::qwen2_vl`]'s
    /// defaults.
    pub fn from_dir(dir: &Path) -> Result<PatchProcessor> {
        PatchProcessor::from_files(&crate::Files::dir(dir))
    }

    /// [`PatchProcessor::from_dir`] over a model's files.
    pub fn from_files(files: &crate::Files) -> Result<PatchProcessor> {
        let mut p = PatchProcessor::qwen2_vl();
        let Some((path, whole)) = processor_config(files, &["preprocessor_config.json"])? else {
            return Ok(p);
        };
        let c = Config::new(path, &whole);
        let size = c.value.get("size").filter(|v| v.is_object()).map(|_| c.object("size")).transpose()?;
        let pick = |key: &str, size_key: &str, default: usize| -> Result<usize> {
            match (c.value.get(key).filter(|v| !v.is_null()), &size) {
                (Some(_), _) => c.usize(key),
                (None, Some(s)) if s.value.get(size_key).is_some() => s.usize(size_key),
                _ => Ok(default),
            }
        };
        p.min_pixels = pick("min_pixels", "shortest_edge", p.min_pixels)?;
        p.max_pixels = pick("max_pixels", "longest_edge", p.max_pixels)?;
        p.patch = c.usize_or("patch_size", p.patch)?;
        p.merge = c.usize_or("merge_size", p.merge)?;
        p.temporal = c.usize_or("temporal_patch_size", p.temporal)?;
        p.filter = resample(&c, p.filter)?;
        // The family's three-channel defaults where the config has none (CLIP's).
        (p.mean, p.std, p.rescale) = normalisation(&c, p.mean, p.std)?;
        let bad = [p.patch, p.merge, p.temporal].contains(&0)
            || p.patch.checked_mul(p.merge).is_none_or(|f| f > 1024)
            || p.temporal > 16
            || p.min_pixels > p.max_pixels
            || p.max_pixels as u64 > MAX_PIXELS;
        if bad {
            return Err(c.error(
                "patch_size",
                &format!(
                    "patch {} x merge {}, {} frames, pixels {}..{}: not a usable processor",
                    p.patch, p.merge, p.temporal, p.min_pixels, p.max_pixels
                ),
            ));
        }
        Ok(p)
    }

    /// The size an image of `height x width` is resized to, as transformers' `smart_resize`
    /// computes it (Python's round-half-to-even included). An aspect over 200 is refused.
    pub fn smart_resize(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let factor = (self.patch * self.merge) as f64;
        let (h, w) = (height as f64, width as f64);
        if height == 0 || width == 0 || h.max(w) / h.min(w) > 200.0 {
            return Err(RuntimeError::Request(format!(
                "a {width}x{height} image: the aspect must be under 200 (Qwen2-VL's processor)"
            )));
        }
        let mut hb = (h / factor).round_ties_even() * factor;
        let mut wb = (w / factor).round_ties_even() * factor;
        if hb * wb > self.max_pixels as f64 {
            let beta = (h * w / self.max_pixels as f64).sqrt();
            hb = factor.max((h / beta / factor).floor() * factor);
            wb = factor.max((w / beta / factor).floor() * factor);
        } else if hb * wb < self.min_pixels as f64 {
            let beta = (self.min_pixels as f64 / (h * w)).sqrt();
            hb = (h * beta / factor).ceil() * factor;
            wb = (w * beta / factor).ceil() * factor;
        }
        Ok((hb as usize, wb as usize))
    }

    /// Resize, normalise and lay out one image.
    pub fn process(&self, img: &Rgb) -> Result<Patches> {
        let (h, w) = self.smart_resize(img.height, img.width)?;
        let resized = resize_with(img, w, h, self.filter)?;
        let (p, m, t) = (self.patch, self.merge, self.temporal);
        let (gh, gw) = (h / p, w / p);
        let row = 3 * t * p * p;
        let mut pixels = vec![0f32; gh * gw * row];
        let value = |c: usize, y: usize, x: usize| {
            normalised(resized.data[(y * w + x) * 3 + c], c, self.rescale, &self.mean, &self.std)
        };
        // Rows in (block row, block column, row in block, column in block) order; within a
        // row, (channel, frame, y, x).
        let mut r = 0;
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        let out = &mut pixels[r * row..(r + 1) * row];
                        for c in 0..3 {
                            for f in 0..t {
                                for py in 0..p {
                                    for px in 0..p {
                                        out[((c * t + f) * p + py) * p + px] = value(c, y0 + py, x0 + px);
                                    }
                                }
                            }
                        }
                        r += 1;
                    }
                }
            }
        }
        Ok(Patches { pixels, grid: (gh, gw), resized })
    }
}

/// The text one `<image>` becomes for an image of `rows x cols` tiles (0 x 0: not split), as
/// Idefics3Processor writes it.
pub fn image_prompt(rows: usize, cols: usize, seq_len: usize) -> String {
    const FAKE: &str = "<fake_token_around_image>";
    const GLOBAL: &str = "<global-img>";
    let image = "<image>".repeat(seq_len);
    if rows == 0 && cols == 0 {
        return format!("{FAKE}{GLOBAL}{image}{FAKE}");
    }
    let mut s = String::new();
    for r in 1..=rows {
        for c in 1..=cols {
            s.push_str(&format!("{FAKE}<row_{r}_col_{c}>{image}"));
        }
        s.push('\n');
    }
    s.push_str(&format!("\n{FAKE}{GLOBAL}{image}{FAKE}"));
    s
}

/// Replace the `<image>` placeholders of `text`, in order, by each image's tile prompt. The
/// number of placeholders must equal the number of images.
pub fn expand_prompt(text: &str, images: &[(usize, usize)], seq_len: usize) -> Result<String> {
    let parts: Vec<&str> = text.split("<image>").collect();
    if parts.len() - 1 != images.len() {
        return Err(RuntimeError::Request(format!(
            "the prompt has {} <image> placeholders for {} images",
            parts.len() - 1,
            images.len()
        )));
    }
    let mut out = String::from(parts[0]);
    for (part, &(rows, cols)) in parts[1..].iter().zip(images) {
        out.push_str(&image_prompt(rows, cols, seq_len));
        out.push_str(part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_processor() {
        assert_eq!(longest_edge_size(240, 320, 192), (144, 192));
        assert_eq!(longest_edge_size(60, 1000, 192), (12, 192));
        assert_eq!(longest_edge_size(301, 100, 64), (64, 22));
        assert_eq!(longest_edge_size(20000, 100, 100000), (4096, 20));
    }

    #[test]
    fn resizing_to_the_same_size_is_the_identity_and_constant_images_stay_constant() {
        let img = Rgb { width: 5, height: 3, data: (0..45).map(|i| (i * 5) as u8).collect() };
        assert_eq!(resize(&img, 5, 3).unwrap(), img);
        let flat = Rgb { width: 7, height: 9, data: vec![200; 7 * 9 * 3] };
        let r = resize(&flat, 3, 20).unwrap();
        assert!(r.data.iter().all(|&v| v == 200), "{:?}", r.data);
    }

    #[test]
    fn malformed_images_are_errors() {
        assert!(Rgb::new(2, 2, vec![0; 11]).is_err());
        assert!(Rgb::new(0, 2, vec![]).is_err());
        let bad = Rgb { width: 10, height: 10, data: vec![] };
        assert!(resize(&bad, 5, 5).is_err());
        let p = ImageProcessor { longest_edge: 64, ..ImageProcessor::smolvlm(32, 4) };
        assert!(p.process(&bad).unwrap_err().to_string().contains("needs 300 bytes"));
        assert!(resize(&Rgb::new(1, 1, vec![0; 3]).unwrap(), 0, 5).is_err());
    }

    #[test]
    fn special_files_and_long_strips_are_refused_before_decoding() {
        let dir = std::env::temp_dir().join(format!("flint-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A directory, and (on Unix) a FIFO that would block open() forever.
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo.png");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
            if made {
                let e = load(&fifo).unwrap_err().to_string();
                assert!(e.contains("not a regular file"), "{e}");
            }
        }
        // A valid PNG of one row of 20000 pixels: under the pixel limit, over the side limit.
        let strip = dir.join("strip.png");
        image::RgbImage::new(MAX_SIDE + 3616, 1).save(&strip).unwrap();
        let e = load(&strip).unwrap_err().to_string();
        assert!(e.contains("20000x1 has a side over flint's limit of 16384"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prompts_expand_per_tile() {
        let p = image_prompt(1, 2, 2);
        assert_eq!(
            p,
            "<fake_token_around_image><row_1_col_1><image><image><fake_token_around_image><row_1_col_2><image><image>\n\n<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
        assert!(expand_prompt("a<image>b", &[], 4).is_err());
        assert_eq!(expand_prompt("x", &[], 4).unwrap(), "x");
    }
}
