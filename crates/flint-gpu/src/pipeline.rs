//! Compiled compute pipelines, cached per device by (shader, entry point, defines, override
//! constants).

use crate::{Device, GpuError, Result, ShaderRegistry};

/// What identifies a compiled kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// Shader file in the registry, e.g. `matmul.wgsl`.
    pub shader: String,
    /// Entry point.
    pub entry: String,
    /// Preprocessor defines, sorted by name.
    pub defines: Vec<(String, String)>,
    /// WGSL override constants (name, value bits as f64), sorted by name.
    pub constants: Vec<(String, u64)>,
}

impl PipelineKey {
    /// A key for `entry` in `shader` without defines or constants.
    pub fn new(shader: &str, entry: &str) -> Self {
        PipelineKey { shader: shader.into(), entry: entry.into(), defines: Vec::new(), constants: Vec::new() }
    }

    /// Add a preprocessor define (an empty value just defines the name).
    pub fn define(mut self, name: &str, value: impl ToString) -> Self {
        self.defines.retain(|(k, _)| k != name);
        self.defines.push((name.into(), value.to_string()));
        self.defines.sort();
        self
    }

    /// Add a define only when `on`.
    pub fn flag(self, name: &str, on: bool) -> Self {
        if on { self.define(name, "") } else { self }
    }

    /// Set a WGSL override constant.
    pub fn constant(mut self, name: &str, value: f64) -> Self {
        self.constants.retain(|(k, _)| k != name);
        self.constants.push((name.into(), value.to_bits()));
        self.constants.sort();
        self
    }

    /// A readable name: `matmul.wgsl:main[F16,TILE=16]{WG=64}`.
    pub fn describe(&self) -> String {
        let defs: Vec<String> =
            self.defines.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect();
        let consts: Vec<String> = self.constants.iter().map(|(k, v)| format!("{k}={}", f64::from_bits(*v))).collect();
        format!("{}:{}[{}]{{{}}}", self.shader, self.entry, defs.join(","), consts.join(","))
    }

    /// The preprocessed WGSL source of this key.
    pub fn source(&self, registry: &ShaderRegistry) -> Result<String> {
        registry.preprocess(&self.shader, &self.defines)
    }
}

/// A compiled compute pipeline and the layout of its bind group 0.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) key: PipelineKey,
}

impl Kernel {
    pub(crate) fn compile(dev: &Device, registry: &ShaderRegistry, key: &PipelineKey) -> Result<Kernel> {
        let module_key = (key.shader.clone(), key.defines.clone());
        let cached = dev.inner.modules.lock().ok().and_then(|m| m.get(&module_key).cloned());
        let module = match cached {
            Some(m) => m,
            None => {
                let source = key.source(registry)?;
                let module = dev
                    .scoped(
                        || format!("compiling {}", key.describe()),
                        || {
                            dev.wgpu().create_shader_module(wgpu::ShaderModuleDescriptor {
                                label: Some(&key.shader),
                                source: wgpu::ShaderSource::Wgsl(source.into()),
                            })
                        },
                    )
                    .map_err(|e| GpuError::Shader { shader: key.describe(), message: e.to_string() })?;
                if let Ok(mut m) = dev.inner.modules.lock() {
                    m.insert(module_key, module.clone());
                }
                module
            }
        };
        let constants: Vec<(&str, f64)> = key.constants.iter().map(|(k, v)| (k.as_str(), f64::from_bits(*v))).collect();
        let pipeline = dev
            .scoped(
                || format!("creating pipeline {}", key.describe()),
                || {
                    dev.wgpu().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&key.entry),
                        layout: None,
                        module: &module,
                        entry_point: Some(&key.entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            // Every flint kernel writes workgroup memory before reading it.
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
                },
            )
            .map_err(|e| GpuError::Shader { shader: key.describe(), message: e.to_string() })?;
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Kernel { pipeline, layout, key: key.clone() })
    }

    /// The key this kernel was compiled from.
    pub fn key(&self) -> &PipelineKey {
        &self.key
    }
}
