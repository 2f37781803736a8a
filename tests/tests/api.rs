//! The GPU layer and launchers on bad input: every mistake is an error value naming what was
//! wrong, never a panic. Also: flint running on a wgpu device the host program created.

mod host;

use flint_gpu::{DType, Device, GpuError, Recorder};
use flint_kernels::matmul;
use flint_ref::matmul::MatmulParams;

fn first_device() -> Device {
    Device::open(&std::env::var("FLINT_ADAPTER").unwrap_or_default()).expect("these tests need an adapter (lavapipe)")
}

#[test]
fn shape_and_dtype_mismatches_are_errors() {
    let dev = first_device();
    let p = MatmulParams::new(4, 3, 5);
    let a = dev.upload_f32("a", &[0.5; 20], &[4, 5], DType::F32).unwrap();
    let short_b = dev.upload_f32("b", &[0.5; 14], &[14], DType::F32).unwrap();
    let c = dev.empty("c", &[4, 3], DType::F32).unwrap();
    let mut rec = Recorder::new(&dev);
    let e = matmul::matmul(&dev, &mut rec, &p, &a, &short_b, None, &c).unwrap_err();
    assert!(matches!(e, GpuError::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("matmul B") && e.to_string().contains("15"), "{e}");

    let ids = dev.upload_u32("ids", &[1; 15], &[15]).unwrap();
    let e = matmul::matmul(&dev, &mut rec, &p, &a, &ids, None, &c).unwrap_err();
    assert!(e.to_string().contains("dtype u32"), "{e}");

    let bias = dev.upload_f32("bias", &[0.0; 3], &[3], DType::F32).unwrap();
    let b = dev.upload_f32("b", &[0.5; 15], &[3, 5], DType::F32).unwrap();
    let e = matmul::matmul(&dev, &mut rec, &p, &a, &b, Some(&bias), &c).unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");

    let e = matmul::matmul(&dev, &mut rec, &MatmulParams::new(0, 3, 5), &a, &b, None, &c).unwrap_err();
    assert!(e.to_string().contains("empty shape"), "{e}");

    let a9 = dev.upload_f32("a", &[0.5; 45], &[9, 5], DType::F32).unwrap();
    let c9 = dev.empty("c", &[9, 3], DType::F32).unwrap();
    let e =
        matmul::matmul_with(&dev, &mut rec, &MatmulParams::new(9, 3, 5), matmul::Strategy::Matvec, &a9, &b, None, &c9)
            .unwrap_err();
    assert!(e.to_string().contains("at most 8 rows"), "{e}");
    assert_eq!(rec.dispatches(), 0, "nothing is recorded for rejected launches");

    let e = dev.upload_f32("x", &[1.0; 3], &[2, 2], DType::F32).unwrap_err();
    assert!(matches!(e, GpuError::DataLength { expected: 4, got: 3, .. }), "{e:?}");
}

#[test]
fn a_tensor_larger_than_a_binding_is_an_error() {
    let dev = first_device();
    let limit = dev.caps().max_storage_binding;
    let elems = (limit / 4 + 1) as usize;
    let e = dev.empty("huge activation", &[elems], DType::F32).unwrap_err();
    match &e {
        GpuError::TooLarge { what, bytes, limit: l, limit_name, .. } => {
            assert_eq!(what, "huge activation");
            assert_eq!(*l, limit);
            assert!(*bytes > limit && limit_name.contains("binding"));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(e.to_string().contains("huge activation"));
}

#[test]
fn f16_on_an_adapter_without_it_is_an_error() {
    let devices: Vec<Device> = Device::open_all("").into_iter().filter_map(Result::ok).collect();
    let Some(dev) = devices.iter().find(|d| !d.caps().f16) else {
        // Every adapter here has f16; the check below still runs on those that do.
        let dev = &devices[0];
        assert!(dev.upload_f32("x", &[1.0], &[1], DType::F16).is_ok());
        return;
    };
    let e = dev.upload_f32("weights", &[1.0; 4], &[4], DType::F16).unwrap_err();
    assert!(matches!(e, GpuError::Unsupported { feature: "SHADER_F16", .. }), "{e:?}");
    assert!(e.to_string().contains("weights"), "{e}");
}

#[test]
fn an_unknown_adapter_lists_the_available_ones() {
    let e = Device::open("no-such-backend-or-name").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GpuError::NoAdapter { .. }) && msg.contains("available"), "{msg}");
}

#[test]
fn too_many_workgroups_is_an_error() {
    let dev = first_device();
    let kernel = dev
        .kernel(
            flint_kernels::registry(),
            &flint_gpu::PipelineKey::new("embed.wgsl", "main").define("WG", 64).define("T", "f32"),
        )
        .unwrap();
    let t = dev.empty("t", &[4], DType::F32).unwrap();
    let mut rec = Recorder::new(&dev);
    let e = rec.dispatch("big", &kernel, &[0u32; 4], &[&t, &t, &t], [u32::MAX, 1, 1]).unwrap_err();
    assert!(e.to_string().contains("workgroups per dimension"), "{e}");
}

#[test]
fn runs_on_a_device_the_host_created() {
    // A host application that owns its wgpu instance, adapter and device hands them to flint.
    let instance =
        flint_gpu::wgpu::Instance::new(flint_gpu::wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&flint_gpu::wgpu::RequestAdapterOptions::default()))
        .expect("an adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&flint_gpu::wgpu::DeviceDescriptor::default())).expect("a device");
    // The host's own handler of uncaptured errors stays in place.
    let host_errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = host_errors.clone();
    device.on_uncaptured_error(std::sync::Arc::new(move |_e: flint_gpu::wgpu::Error| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let dev = Device::from_wgpu(device, queue, &adapter.get_info());
    assert!(!dev.caps().f16, "no features were requested, so flint must not assume f16");
    // A mapped-at-creation buffer whose size is not a multiple of 4 is invalid.
    let _bad = dev.wgpu().create_buffer(&flint_gpu::wgpu::BufferDescriptor {
        label: Some("the host's mistake"),
        size: 3,
        usage: flint_gpu::wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    assert_eq!(host_errors.load(std::sync::atomic::Ordering::SeqCst), 1, "the host's error handler was replaced");
    // The features and limits flint asks for are published for such hosts.
    assert!(flint_gpu::wanted_features().contains(flint_gpu::wgpu::Features::SHADER_F16));
    let p = MatmulParams::new(2, 3, 4);
    let a = dev.upload_f32("a", &[1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 0.0, 1.0], &[2, 4], DType::F32).unwrap();
    let b = dev.upload_f32("b", &[1.0; 12], &[3, 4], DType::F32).unwrap();
    let c = dev.empty("c", &[2, 3], DType::F32).unwrap();
    let mut rec = Recorder::new(&dev);
    matmul::matmul(&dev, &mut rec, &p, &a, &b, None, &c).unwrap();
    rec.submit().unwrap().wait().unwrap();
    assert_eq!(dev.read_f32(&c).unwrap(), vec![10.0, 10.0, 10.0, 2.0, 2.0, 2.0]);
}

/// A host that owns the device draws a frame, then has flint record a matmul over its own
/// buffers into the same command encoder, and submits both itself, frame after frame.
#[test]
fn flint_records_into_the_host_encoder_between_frames() {
    use flint_gpu::wgpu;
    let (adapter, device, queue) = host::device();
    let dev = Device::from_wgpu(device.clone(), queue.clone(), &adapter.get_info());
    // The host's frame target and its data buffers.
    let view = host::frame(&device);
    let host_buffer = |label: &str, floats: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * floats as u64,
            usage: flint_gpu::TENSOR_USAGE,
            mapped_at_creation: false,
        })
    };
    let (a_buf, b_buf, c_buf) = (host_buffer("a", 8), host_buffer("b", 12), host_buffer("c", 6));
    let a = dev.wrap_buffer(a_buf.clone(), &[2, 4], DType::F32).unwrap();
    let b = dev.wrap_buffer(b_buf.clone(), &[3, 4], DType::F32).unwrap();
    let c = dev.wrap_buffer(c_buf, &[2, 3], DType::F32).unwrap();
    let p = MatmulParams::new(2, 3, 4);
    for frame in 0..3 {
        let x = frame as f32;
        queue.write_buffer(&a_buf, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0, 0.0, 1.0, 0.0, 1.0]));
        queue.write_buffer(&b_buf, 0, bytemuck::cast_slice(&[x; 12]));
        let mut enc = device.create_command_encoder(&Default::default());
        host::draw(&mut enc, &view, wgpu::Color::BLUE);
        let mut rec = Recorder::new(&dev);
        matmul::matmul(&dev, &mut rec, &p, &a, &b, None, &c).unwrap();
        // The plan owns what it binds; the host keeps it until its submission has run.
        let plan = rec.into_plan().unwrap();
        plan.encode(&mut enc);
        let index = queue.submit([enc.finish()]);
        dev.wait_for(index).unwrap();
        drop(plan);
        assert_eq!(
            dev.read_f32(&c).unwrap(),
            vec![10.0 * x, 10.0 * x, 10.0 * x, 2.0 * x, 2.0 * x, 2.0 * x],
            "frame {frame}"
        );
    }
    // A buffer flint cannot bind is refused, naming what it lacks.
    let plain = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let e = dev.wrap_buffer(plain, &[4], DType::F32).unwrap_err().to_string();
    assert!(e.contains("lacks STORAGE"), "{e}");
    let e = dev.wrap_buffer(host_buffer("small", 2), &[4], DType::F32).unwrap_err().to_string();
    assert!(e.contains("needs 16 bytes"), "{e}");
}

/// The roofline's read probe reads every word once (so its GB/s counts real loads) and checks
/// its input length.
#[test]
fn the_read_probe_reads_every_word() {
    use flint_kernels::roofline;
    let dev = first_device();
    let threads = 16384usize;
    let words: Vec<u32> = (0..16 * threads as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let src = dev.upload_u32("words", &words, &[words.len()]).unwrap();
    let sums = dev.empty("sums", &[4 * threads], DType::U32).unwrap();
    let mut rec = Recorder::new(&dev);
    roofline::read(&dev, &mut rec, &src, &sums).unwrap();
    rec.submit().and_then(|s| s.wait()).unwrap();
    let got = dev.read_u32(&sums).unwrap();
    // Invocation i sums vec4s i + j * threads for j = 0..4 in four chains (one each here) and
    // xors the chains.
    for i in [0, 1, 777, threads - 1] {
        for c in 0..4 {
            let want = (0..4).fold(0u32, |acc, j| acc ^ words[4 * (i + j * threads) + c]);
            assert_eq!(got[4 * i + c], want, "invocation {i}, component {c}");
        }
    }
    let short = dev.upload_u32("words", &words[..words.len() - 4], &[words.len() - 4]).unwrap();
    let e = roofline::read(&dev, &mut Recorder::new(&dev), &short, &sums).unwrap_err();
    assert!(e.to_string().contains("multiple of"), "{e}");
}

/// A GGUF image holding `tensors` (name, GGML type id, dims as GGUF orders them, data bytes).
fn gguf_with(tensors: &[(&str, u32, [u64; 2], Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let mut offset = 0u64;
    for (name, ty, dims, data) in tensors {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(2u32.to_le_bytes());
        b.extend(dims[0].to_le_bytes());
        b.extend(dims[1].to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        b.extend(data);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
    }
    b
}

/// Q4_1 blocks of random nibbles with a small scale and a negative minimum.
fn q4_1_bytes(rows: usize, k: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 24) as u8
    };
    let mut b = Vec::new();
    for _ in 0..rows * k / 32 {
        b.extend(half::f16::from_f32(0.01 + f32::from(next()) * 1e-4).to_le_bytes());
        b.extend(half::f16::from_f32(-0.08).to_le_bytes());
        for _ in 0..16 {
            b.push(next());
        }
    }
    b
}

/// A file whose attn_q is f32 and attn_k/attn_v are Q4_1 (valid GGUF; llama.cpp runs it) loads
/// as one stacked QKV projection, and its output is the three matrices' products side by side.
#[test]
fn a_stack_of_dense_and_quantized_matrices_loads_and_multiplies() {
    use flint_runtime::gguf::Gguf;
    use flint_runtime::model::weights::WeightSource;
    let dev = first_device();
    let (k, nq, nkv, m) = (64usize, 48usize, 32usize, 3usize);
    let wq: Vec<f32> = (0..nq * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
    let wq_bytes: Vec<u8> = wq.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (wk, wv) = (q4_1_bytes(nkv, k, 1), q4_1_bytes(nkv, k, 2));
    let bytes = gguf_with(&[
        ("q", 0, [k as u64, nq as u64], wq_bytes),
        ("k", 3, [k as u64, nkv as u64], wk.clone()),
        ("v", 3, [k as u64, nkv as u64], wv.clone()),
    ]);
    let g = Gguf::from_bytes("mixed.gguf", bytes).unwrap();
    let stack = g.stacked(&dev, &[("q", nq), ("k", nkv), ("v", nkv)], k).unwrap();
    let n = nq + 2 * nkv;
    assert_eq!(stack.n, n);

    let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
    let xt = dev.upload_f32("x", &x, &[m, k], DType::F32).unwrap();
    let out = dev.empty("qkv", &[m, n], DType::F32).unwrap();
    let mut rec = Recorder::new(&dev);
    stack.forward(&dev, &mut rec, &xt, m, &out).unwrap();
    rec.submit().unwrap().wait().unwrap();
    let got = dev.read_f32(&out).unwrap();

    let fmt = flint_ref::quant::BlockFormat::Q4_1;
    let w: Vec<f32> = wq
        .iter()
        .copied()
        .chain(flint_ref::quant::dequantize(fmt, &wk, nkv * k).unwrap())
        .chain(flint_ref::quant::dequantize(fmt, &wv, nkv * k).unwrap())
        .collect();
    let mut worst = 0f32;
    for r in 0..m {
        for c in 0..n {
            let want: f32 = (0..k).map(|e| x[r * k + e] * w[c * k + e]).sum();
            worst = worst.max((got[r * n + c] - want).abs() / (1.0 + want.abs()));
        }
    }
    assert!(worst < 1e-4, "worst relative error {worst}");
}

/// The awaited readbacks (the browser's only kind) give the blocking ones' bytes, natively too.
#[test]
fn awaited_readbacks_equal_blocking_ones() {
    let dev = first_device();
    let f = dev.upload_f32("f", &[1.5, -2.0, 3.25], &[3], DType::F32).unwrap();
    let h = dev.upload_f32("h", &[0.5, 7.0, -1.0], &[3], DType::F16).unwrap();
    let u = dev.upload_u32("u", &[1, 2, 0xFFFF_FFFF], &[3]).unwrap();
    assert_eq!(pollster::block_on(dev.read_f32_async(&f)).unwrap(), dev.read_f32(&f).unwrap());
    assert_eq!(pollster::block_on(dev.read_f32_async(&h)).unwrap(), vec![0.5, 7.0, -1.0]);
    assert_eq!(pollster::block_on(dev.read_u32_async(&u)).unwrap(), vec![1, 2, 0xFFFF_FFFF]);
    assert_eq!(pollster::block_on(dev.read_bytes_async(&f)).unwrap(), dev.read_bytes(&f).unwrap());
}

/// The conformance table's awaited run (what the browser page runs) gives the blocking run's
/// verdicts and errors, on attention over several key tiles and on a quant matmul.
#[test]
fn awaited_conformance_runs_match_blocking_ones() {
    let dev = first_device();
    let cases: Vec<_> = flint_conformance::cases::all_cases()
        .into_iter()
        .filter(|c| {
            let n = c.name();
            n == "attn_decode_causal_f32_q1_kv65_h9x3_d64" || n == "qmatmul_q4_1_33x70x288"
        })
        .collect();
    assert_eq!(cases.len(), 2, "the cases this test runs were renamed");
    for case in &cases {
        let blocking = flint_conformance::run_case(&dev, case.as_ref());
        let awaited = pollster::block_on(flint_conformance::run_case_async(&dev, case.as_ref()));
        assert_eq!(awaited.status, flint_conformance::Status::Pass, "{}: {:?}", awaited.case, awaited.reason);
        assert_eq!((awaited.status, awaited.nmse), (blocking.status, blocking.nmse), "{}", awaited.case);
    }
}

/// WebGPU binds storage only at multiples of 256 bytes (Vulkan adapters often allow 16 or 4): on
/// a device that asks for WebGPU's alignments and, like Chromium's, has no subgroups, the cases
/// that bind row chunks and halves of a tensor still pass (the quant matmul's chunks of 8 rows
/// then go through aligned scratch).
#[test]
fn kernels_run_with_webgpu_binding_alignment() {
    let (adapter, _, _) = host::device();
    let mut limits = flint_gpu::wanted_limits(&adapter);
    limits.min_storage_buffer_offset_alignment = limits.min_storage_buffer_offset_alignment.max(256);
    limits.min_uniform_buffer_offset_alignment = limits.min_uniform_buffer_offset_alignment.max(256);
    let desc = flint_gpu::wgpu::DeviceDescriptor {
        required_features: adapter.features() & (flint_gpu::wanted_features() - flint_gpu::wgpu::Features::SUBGROUP),
        required_limits: limits,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    let dev = Device::from_wgpu(device, queue, &adapter.get_info());
    assert_eq!(dev.caps().storage_offset_alignment, 256);
    let cases: Vec<_> = flint_conformance::cases::all_cases()
        .into_iter()
        .filter(|c| c.tier() == flint_conformance::Tier::Test)
        .filter(|c| c.name().starts_with("qmatmul_") || c.name().starts_with("rope_qkv"))
        .collect();
    assert!(cases.len() > 20, "{} cases", cases.len());
    let failed: Vec<String> = cases
        .iter()
        .map(|c| flint_conformance::run_case(&dev, c.as_ref()))
        .filter(|r| r.status == flint_conformance::Status::Fail)
        .map(|r| format!("{}: {}", r.case, r.reason.unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "{} failed:\n{}", failed.len(), failed.join("\n"));
}
