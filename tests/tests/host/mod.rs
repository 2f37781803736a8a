//! A host program's side of the GPU, for the tests of flint on a host-owned device: the host's
//! own wgpu device (with the features and limits flint asks for, where the adapter has them)
//! and a frame it draws.

use flint_gpu::wgpu;

/// The host's adapter, device and queue.
pub fn device() -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let desc = wgpu::DeviceDescriptor {
        required_features: adapter.features() & flint_gpu::wanted_features(),
        required_limits: flint_gpu::wanted_limits(&adapter),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    (adapter, device, queue)
}

/// The host's 64 x 64 frame target.
pub fn frame(device: &wgpu::Device) -> wgpu::TextureView {
    device
        .create_texture(&wgpu::TextureDescriptor {
            label: Some("frame"),
            size: wgpu::Extent3d { width: 64, height: 64, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            view_formats: &[],
        })
        .create_view(&Default::default())
}

/// Record the host's drawing of a frame (a clear to `color`) into `enc`.
pub fn draw(enc: &mut wgpu::CommandEncoder, view: &wgpu::TextureView, color: wgpu::Color) {
    drop(enc.begin_render_pass(&wgpu::RenderPassDescriptor {
        label: Some("the host's frame"),
        color_attachments: &[Some(wgpu::RenderPassColorAttachment {
            view,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations { load: wgpu::LoadOp::Clear(color), store: wgpu::StoreOp::Store },
        })],
        ..Default::default()
    }));
}
