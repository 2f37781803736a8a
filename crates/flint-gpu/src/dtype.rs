//! Element types of tensors.

use std::fmt;

/// The element type of a [`crate::Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (needs `SHADER_F16` in kernels).
    F16,
    /// 32-bit unsigned integer (token ids, positions, page tables).
    U32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }

    /// Short lowercase name, as used in case and kernel names (`f32`, `f16`, `u32`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }

    /// Bytes needed to store `numel` elements.
    pub const fn bytes(self, numel: usize) -> usize {
        numel * self.size()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
