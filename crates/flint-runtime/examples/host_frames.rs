//! A host program that owns the GPU: it creates its own wgpu device (asking for the features
//! and limits flint uses where the adapter has them), draws its frames with it, and between
//! frames has flint advance a model by one batched decode step on the same device. The engine
//! is `Send`, so a real application could as well run it on a worker thread.
//!
//! cargo run --release --example host_frames -p flint-runtime -- MODEL.gguf

use std::collections::HashMap;
use std::time::Instant;

use flint_runtime::engine::{EngineOptions, Event, Request};
use flint_runtime::gpu::{self, Device, wgpu};
use flint_runtime::model::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: host_frames MODEL.gguf");
        std::process::exit(2);
    };
    // The host's device. flint leaves its uncaptured-error handler alone and waits only for
    // its own submissions.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_features: adapter.features() & gpu::wanted_features(),
        required_limits: gpu::wanted_limits(&adapter),
        ..Default::default()
    }))?;
    device.on_uncaptured_error(std::sync::Arc::new(|e| eprintln!("host: GPU error: {e}")));
    let dev = Device::from_wgpu(device.clone(), queue.clone(), &adapter.get_info());
    let model = Model::load(&dev, &path)?;
    let mut engine = model.engine(EngineOptions { kv_tokens: 4096, page_size: 64, max_batch: 4 })?;
    let prompts = ["The capital of France is", "Once upon a time"];
    let mut texts = HashMap::new();
    for prompt in prompts {
        let id = engine.submit(Request::new(model.prompt_ids(prompt, false)?, model.sampling(24)))?;
        texts.insert(id, (prompt, Vec::new()));
    }

    // The frame the host draws: a 256 x 256 target cleared to a colour that changes per frame.
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d { width: 256, height: 256, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
        view_formats: &[],
    });
    let view = target.create_view(&Default::default());
    let (mut frames, mut model_time) = (0u32, 0.0f64);
    while !engine.is_idle() {
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let shade = f64::from(frames % 60) / 60.0;
            let _pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("the host's frame"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color { r: shade, g: 0.2, b: 0.4, a: 1.0 }),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
        }
        queue.submit([enc.finish()]);
        // Between frames: one decode step for every running request.
        let t = Instant::now();
        for event in engine.step()? {
            match event {
                Event::Token { request, token, .. } => {
                    if let Some((_, ids)) = texts.get_mut(&request) {
                        ids.push(token);
                    }
                }
                Event::Failed { request, error } => eprintln!("request {} failed: {error}", request.0),
                Event::Finished { .. } => {}
            }
        }
        model_time += t.elapsed().as_secs_f64();
        frames += 1;
    }
    let mut done: Vec<_> = texts.into_iter().collect();
    done.sort_by_key(|(id, _)| *id);
    for (_, (prompt, ids)) in done {
        println!("{prompt}{}", model.tokenizer().decode(&ids, true)?);
    }
    eprintln!("{frames} frames, {:.1} ms of model work per frame", model_time * 1e3 / f64::from(frames.max(1)));
    Ok(())
}
