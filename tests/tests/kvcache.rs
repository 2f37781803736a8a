//! The paged KV pool: appends, forks that share pages, copy-on-write of a shared partial page,
//! freeing, running out of pages; and attention's checks on page tables and shapes.

use flint_gpu::{DType, Device, Recorder};
use flint_kernels::attention::{self, KvCache, PageTable};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_runtime::kvpool::KvPool;

const PAGE: usize = 4;
const ROW: usize = 4; // one KV head of 4

fn device() -> Device {
    Device::open(&std::env::var("FLINT_ADAPTER").unwrap_or_default()).expect("these tests need an adapter (lavapipe)")
}

/// Write tokens whose K values are `value(pos)` for `seq` at `positions`, with V = -K.
fn write(dev: &Device, pool: &mut KvPool, seq: flint_runtime::kvpool::SeqId, n: usize, base: f32) {
    let mut rec = Recorder::new(dev);
    let positions = pool.append(&mut rec, seq, n).unwrap();
    let k: Vec<f32> = positions.clone().flat_map(|p| [base + p as f32; ROW]).collect();
    let v: Vec<f32> = k.iter().map(|x| -x).collect();
    let kt = dev.upload_f32("k", &k, &[n, 1, ROW], DType::F32).unwrap();
    let vt = dev.upload_f32("v", &v, &[n, 1, ROW], DType::F32).unwrap();
    let table = pool.page_table(dev, &[seq]).unwrap();
    let dest: Vec<(usize, usize)> = positions.map(|p| (0, p)).collect();
    // Layer 1 holds the negated values, so a copy that missed a layer shows.
    attention::append_kv(dev, &mut rec, 1, ROW, &kt, &vt, &dest, &pool.cache(0).unwrap(), &table).unwrap();
    attention::append_kv(dev, &mut rec, 1, ROW, &vt, &kt, &dest, &pool.cache(1).unwrap(), &table).unwrap();
    rec.submit().unwrap().wait().unwrap();
}

/// The K value stored for each position of `seq` (first element of each row), and V's.
fn read(dev: &Device, pool: &KvPool, seq: flint_runtime::kvpool::SeqId) -> (Vec<f32>, Vec<f32>) {
    let (k, v) = read_layer(dev, pool, seq, 0);
    let (k1, v1) = read_layer(dev, pool, seq, 1);
    assert_eq!((&k1, &v1), (&v, &k), "layer 1 mirrors layer 0");
    (k, v)
}

fn read_layer(dev: &Device, pool: &KvPool, seq: flint_runtime::kvpool::SeqId, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let cache = pool.cache(layer).unwrap();
    let k = dev.read_f32(&cache.k).unwrap();
    let v = dev.read_f32(&cache.v).unwrap();
    let pages = pool.pages(seq).unwrap();
    (0..pool.len(seq).unwrap())
        .map(|p| {
            let slot = pages[p / PAGE] as usize * PAGE + p % PAGE;
            (k[slot * ROW], v[slot * ROW])
        })
        .unzip()
}

#[test]
fn append_fork_copy_on_write_and_free() {
    let dev = device();
    let mut pool = KvPool::new(&dev, 2, 8, PAGE, 1, ROW, DType::F32).unwrap();
    let a = pool.create();
    write(&dev, &mut pool, a, 6, 100.0);
    assert_eq!(pool.used_pages(), 2);
    assert_eq!(read(&dev, &pool, a).0, (0..6).map(|p| 100.0 + p as f32).collect::<Vec<_>>());

    let b = pool.fork(a).unwrap();
    assert_eq!(pool.used_pages(), 2, "a fork shares pages");
    assert!(pool.pages(a).unwrap().iter().all(|&p| pool.page_refs(p) == 2));

    // b writes into the shared, partly filled last page: it gets its own copy first.
    write(&dev, &mut pool, b, 1, 200.0);
    assert_eq!(pool.used_pages(), 3);
    let (pa, pb) = (pool.pages(a).unwrap().to_vec(), pool.pages(b).unwrap().to_vec());
    assert_eq!(pa[0], pb[0], "full pages stay shared");
    assert_ne!(pa[1], pb[1], "the partial page was copied");
    assert_eq!((pool.page_refs(pa[0]), pool.page_refs(pa[1]), pool.page_refs(pb[1])), (2, 1, 1));
    let mut want_b: Vec<f32> = (0..6).map(|p| 100.0 + p as f32).collect();
    want_b.push(206.0);
    assert_eq!(read(&dev, &pool, b).0, want_b);
    let (ka, va) = read(&dev, &pool, a);
    assert_eq!(ka, (0..6).map(|p| 100.0 + p as f32).collect::<Vec<_>>(), "a is untouched");
    assert_eq!(va, ka.iter().map(|x| -x).collect::<Vec<_>>());

    // a's last page is its own now: appending fills it, then takes a new page.
    write(&dev, &mut pool, a, 3, 300.0);
    assert_eq!(pool.len(a).unwrap(), 9);
    assert_eq!(pool.pages(a).unwrap().len(), 3);
    assert_eq!(read(&dev, &pool, a).0[6..], [306.0, 307.0, 308.0]);

    pool.free(b).unwrap();
    assert_eq!(pool.page_refs(pa[0]), 1);
    assert_eq!(pool.used_pages(), 3);
    pool.free(a).unwrap();
    assert_eq!(pool.used_pages(), 0);
    assert!(pool.len(a).is_err(), "a freed sequence is gone");
}

#[test]
fn running_out_of_pages_changes_nothing() {
    let dev = device();
    let mut pool = KvPool::new(&dev, 1, 2, PAGE, 1, ROW, DType::F32).unwrap();
    let a = pool.create();
    let mut rec = Recorder::new(&dev);
    pool.append(&mut rec, a, 5).unwrap();
    let e = pool.append(&mut rec, a, 4).unwrap_err();
    assert!(e.to_string().contains("needs 1 more pages"), "{e}");
    assert_eq!(pool.len(a).unwrap(), 5);
    assert_eq!(pool.used_pages(), 2);
}

#[test]
fn attention_rejects_bad_tables_and_shapes_before_dispatch() {
    let dev = device();
    let e = PageTable::new(&dev, &[vec![0, 1], vec![7]], 4).unwrap_err();
    assert!(e.to_string().contains("sequence 1 entry 0 is page 7, past the pool's 4 pages"), "{e}");

    let pool = KvPool::new(&dev, 1, 4, PAGE, 1, 64, DType::F32).unwrap();
    let table = PageTable::new(&dev, &[vec![0, 1]], 4).unwrap();
    let q = dev.empty("q", &[3, 64], DType::F32).unwrap();
    let out = dev.empty("out", &[3, 64], DType::F32).unwrap();
    let p = AttnParams {
        seqs: 1,
        q_len: 1,
        n_heads: 3,
        n_kv_heads: 1,
        head_dim: 64,
        scale: 0.125,
        mask: Mask::Causal,
        additive_mask: false,
        mask_stride: 0,
    };
    let mut rec = Recorder::new(&dev);
    let cache = pool.cache(0).unwrap();
    let long = [SeqSpec { kv_len: 9, q_pos0: 8 }];
    let e = attention::attention(&dev, &mut rec, &p, &long, &q, &cache, &table, None, &out).unwrap_err();
    assert!(e.to_string().contains("9 keys but its 2 pages hold 8"), "{e}");

    let ok = [SeqSpec { kv_len: 8, q_pos0: 7 }];
    let bad_heads = AttnParams { n_heads: 3, n_kv_heads: 2, ..p };
    let e = attention::attention(&dev, &mut rec, &bad_heads, &ok, &q, &cache, &table, None, &out).unwrap_err();
    assert!(e.to_string().contains("do not divide"), "{e}");

    let odd = KvPool::new(&dev, 1, 4, PAGE, 1, 66, DType::F32).unwrap();
    let q66 = dev.empty("q", &[3, 66], DType::F32).unwrap();
    let out66 = dev.empty("out", &[3, 66], DType::F32).unwrap();
    let p66 = AttnParams { head_dim: 66, ..p };
    let e = attention::attention(&dev, &mut rec, &p66, &ok, &q66, &odd.cache(0).unwrap(), &table, None, &out66)
        .unwrap_err();
    assert!(e.to_string().contains("head_dim 66"), "{e}");

    let k2 = dev.empty("k", &[2, PAGE, 1, 64], DType::F32).unwrap();
    let small = KvCache { k: k2.clone(), v: k2, num_pages: 2, ..cache };
    let e = attention::attention(&dev, &mut rec, &p, &ok, &q, &small, &table, None, &out).unwrap_err();
    assert!(e.to_string().contains("checked against 4 pages but the pool has 2"), "{e}");
    assert_eq!(rec.dispatches(), 0);
}

#[test]
fn merge_reports_the_combined_log_sum_exp() {
    let dev = device();
    // Two states of one row of 4: lse 0 and ln 3 -> weights 1/4, 3/4; merged lse ln 4.
    let parts = dev.upload_f32("parts", &[1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0], &[2, 1, 4], DType::F32).unwrap();
    let lse = dev.upload_f32("lse", &[0.0, 3f32.ln()], &[2, 1], DType::F32).unwrap();
    let out = dev.empty("out", &[1, 4], DType::F32).unwrap();
    let lse_out = dev.empty("lse out", &[1], DType::F32).unwrap();
    let mut rec = Recorder::new(&dev);
    attention::merge_states(&dev, &mut rec, 1, 2, 4, &parts, &lse, &out, &lse_out).unwrap();
    rec.submit().unwrap().wait().unwrap();
    for v in dev.read_f32(&out).unwrap() {
        assert!((v - 4.0).abs() < 1e-6, "{v}");
    }
    assert!((dev.read_f32(&lse_out).unwrap()[0] - 4f32.ln()).abs() < 1e-6);
}

#[test]
fn truncating_a_fork_releases_its_pages_and_never_writes_shared_ones() {
    let dev = device();
    let mut pool = KvPool::new(&dev, 2, 8, PAGE, 1, ROW, DType::F32).unwrap();
    let a = pool.create();
    write(&dev, &mut pool, a, 9, 100.0);
    let b = pool.fork(a).unwrap();
    let shared = read(&dev, &pool, b).0;
    // a goes back to 5 tokens: its third page (9 tokens take 3) is released, the second stays
    // shared and partly filled, so a's next token must land in a copy of it.
    pool.truncate(a, 5).unwrap();
    assert_eq!(pool.pages(a).unwrap().len(), 2);
    assert_eq!(pool.page_refs(pool.pages(b).unwrap()[2]), 1, "the released page is b's alone");
    write(&dev, &mut pool, a, 1, 500.0);
    assert_eq!(read(&dev, &pool, b).0, shared, "b is untouched");
    assert_eq!(read(&dev, &pool, a).0[5], 505.0);
    assert_ne!(pool.pages(a).unwrap()[1], pool.pages(b).unwrap()[1]);
    // Back to a page boundary: the next token takes a fresh page instead of writing b's.
    pool.truncate(a, 4).unwrap();
    write(&dev, &mut pool, a, 1, 600.0);
    assert_eq!(read(&dev, &pool, b).0, shared, "b is still untouched");
    pool.free(a).unwrap();
    pool.free(b).unwrap();
    assert_eq!(pool.used_pages(), 0);
}

#[test]
fn a_checkpoint_undoes_appends_and_forks() {
    let dev = device();
    let mut pool = KvPool::new(&dev, 1, 8, PAGE, 1, ROW, DType::F32).unwrap();
    let a = pool.create();
    let mut rec = Recorder::new(&dev);
    pool.append(&mut rec, a, 6).unwrap();
    let saved = pool.checkpoint();
    let b = pool.fork(a).unwrap();
    pool.append(&mut rec, b, 3).unwrap();
    pool.append(&mut rec, a, 7).unwrap();
    pool.restore(saved);
    assert_eq!((pool.len(a).unwrap(), pool.used_pages()), (6, 2));
    assert!(pool.len(b).is_err(), "the fork is undone");
}
