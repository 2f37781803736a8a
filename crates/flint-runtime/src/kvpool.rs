//! The paged KV cache's allocator (runtime policy; the attention kernels take only a layer's
//! [`KvCache`] and a [`PageTable`]): fixed-size pages in one pool shared by all sequences, each
//! sequence a list of pages. Sequences grow page by page, fork by sharing every page (a
//! reference count per page), and copy a shared page only when they must write into it (the
//! last, partly filled page); freeing returns pages whose count drops to zero. Every layer has
//! its own region of the pool laid out the same way, so one page table serves all layers.

use flint_gpu::{DType, Device, GpuError, Recorder, Result, Tensor};

use flint_kernels::attention::{KvCache, PageTable};

/// A sequence's handle in a [`KvPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u32);

#[derive(Clone, Debug, Default)]
struct Seq {
    pages: Vec<u32>,
    len: usize,
    /// Added to a cache position to make the rotary position (M-RoPE's delta after images).
    rope_offset: i64,
}

/// A copy of a [`KvPool`]'s bookkeeping (see [`KvPool::checkpoint`]).
#[derive(Clone, Debug)]
pub struct PoolCheckpoint {
    free: Vec<u32>,
    refs: Vec<u32>,
    seqs: Vec<Option<Seq>>,
}

/// K and V pools, one `[num_pages, page_size, n_kv_heads, head_dim]` tensor of each per layer
/// (so that a layer, not the whole cache, must fit a binding), and their bookkeeping.
pub struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    layers: usize,
    page_size: usize,
    num_pages: usize,
    row: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
    seqs: Vec<Option<Seq>>,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("page_size", &self.page_size)
            .field("num_pages", &self.num_pages)
            .field("free", &self.free.len())
            .finish()
    }
}

fn err(message: String) -> GpuError {
    GpuError::Shape { what: "kv pool".into(), message }
}

impl KvPool {
    /// A pool of `num_pages` pages of `page_size` slots for `n_kv_heads` heads of `head_dim`,
    /// for each of `layers` layers.
    pub fn new(
        dev: &Device,
        layers: usize,
        num_pages: usize,
        page_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<KvPool> {
        if layers == 0 || num_pages == 0 || page_size == 0 || n_kv_heads == 0 || head_dim == 0 {
            return Err(err(format!(
                "{layers} layers of {num_pages} pages of {page_size} slots of {n_kv_heads}x{head_dim}"
            )));
        }
        // Page ids are u32 on the GPU. One layer's K (or V) must fit a binding, which
        // `Device::empty` checks (with checked arithmetic) before the page count sizes anything.
        if u32::try_from(num_pages).is_err() {
            return Err(err(format!("{num_pages} pages: page ids are 32-bit")));
        }
        let shape = [num_pages, page_size, n_kv_heads, head_dim];
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(dev.empty("kv pool k (one layer)", &shape, dtype)?);
            v.push(dev.empty("kv pool v (one layer)", &shape, dtype)?);
        }
        Ok(KvPool {
            k,
            v,
            layers,
            page_size,
            num_pages,
            row: n_kv_heads * head_dim,
            free: (0..num_pages as u32).rev().collect(),
            refs: vec![0; num_pages],
            seqs: Vec::new(),
        })
    }

    /// Layer `layer`'s region as the attention kernels read it.
    pub fn cache(&self, layer: usize) -> Result<KvCache> {
        if layer >= self.layers {
            return Err(err(format!("layer {layer} of a pool of {}", self.layers)));
        }
        let shape = [self.num_pages, self.page_size, self.row];
        Ok(KvCache {
            k: self.k[layer].reshape(&shape)?,
            v: self.v[layer].reshape(&shape)?,
            page_size: self.page_size,
            num_pages: self.num_pages,
        })
    }

    /// Layers in the pool.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Pages not used by any sequence.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Pages in use (each counted once however many sequences share it).
    pub fn used_pages(&self) -> usize {
        self.num_pages - self.free.len()
    }

    /// Bytes of K and V one page holds, over all layers.
    pub fn page_bytes(&self) -> usize {
        2 * self.layers * self.page_size * self.row * self.k[0].dtype().size()
    }

    /// Bytes of K and V held by pages in use, over all layers.
    pub fn used_bytes(&self) -> usize {
        self.used_pages() * self.page_bytes()
    }

    /// How many sequences share page `page`.
    pub fn page_refs(&self, page: u32) -> u32 {
        self.refs.get(page as usize).copied().unwrap_or(0)
    }

    fn seq(&self, id: SeqId) -> Result<&Seq> {
        self.seqs.get(id.0 as usize).and_then(Option::as_ref).ok_or_else(|| err(format!("no sequence {}", id.0)))
    }

    fn seq_mut(&mut self, id: SeqId) -> Result<&mut Seq> {
        self.seqs.get_mut(id.0 as usize).and_then(Option::as_mut).ok_or_else(|| err(format!("no sequence {}", id.0)))
    }

    /// A new empty sequence.
    pub fn create(&mut self) -> SeqId {
        if let Some(i) = self.seqs.iter().position(Option::is_none) {
            self.seqs[i] = Some(Seq::default());
            return SeqId(i as u32);
        }
        self.seqs.push(Some(Seq::default()));
        SeqId(self.seqs.len() as u32 - 1)
    }

    /// Tokens stored for `id`.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// What is added to `id`'s cache positions to make their rotary positions (0 but after an
    /// M-RoPE prompt with images, whose tokens take fewer positions than they fill; forks
    /// keep it).
    pub fn rope_offset(&self, id: SeqId) -> Result<i64> {
        Ok(self.seq(id)?.rope_offset)
    }

    /// Set [`KvPool::rope_offset`] of `id`.
    pub fn set_rope_offset(&mut self, id: SeqId, offset: i64) -> Result<()> {
        self.seq_mut(id)?.rope_offset = offset;
        Ok(())
    }

    /// The pages of `id`, in order.
    pub fn pages(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(id)?.pages)
    }

    /// A new sequence with the same contents as `id`, sharing all of its pages.
    pub fn fork(&mut self, id: SeqId) -> Result<SeqId> {
        let copy = self.seq(id)?.clone();
        for &p in &copy.pages {
            self.refs[p as usize] += 1;
        }
        let new = self.create();
        *self.seq_mut(new)? = copy;
        Ok(new)
    }

    /// Release `id`; pages no other sequence shares become free.
    pub fn free(&mut self, id: SeqId) -> Result<()> {
        let seq = self.seq(id)?.clone();
        for p in seq.pages {
            self.refs[p as usize] -= 1;
            if self.refs[p as usize] == 0 {
                self.free.push(p);
            }
        }
        self.seqs[id.0 as usize] = None;
        Ok(())
    }

    fn alloc_page(&mut self) -> Result<u32> {
        let p = self.free.pop().ok_or_else(|| err(format!("out of pages (all {} in use)", self.num_pages)))?;
        self.refs[p as usize] = 1;
        Ok(p)
    }

    /// Make room for `n` more tokens in `id` and return their positions. Pages are allocated as
    /// needed; if the last page is shared and partly filled, it is copied first (recorded into
    /// `rec`) so the append cannot change the other sequences. Nothing changes on error.
    pub fn append(&mut self, rec: &mut Recorder, id: SeqId, n: usize) -> Result<std::ops::Range<usize>> {
        self.atomically(|pool| pool.append_inner(rec, id, n))
    }

    fn append_inner(&mut self, rec: &mut Recorder, id: SeqId, n: usize) -> Result<std::ops::Range<usize>> {
        let (len, pages) = {
            let s = self.seq(id)?;
            (s.len, s.pages.clone())
        };
        let needed = (len + n).div_ceil(self.page_size);
        let shared_partial = len % self.page_size != 0 && n > 0 && self.refs[*pages.last().unwrap_or(&0) as usize] > 1;
        let new_pages = needed.saturating_sub(pages.len()) + usize::from(shared_partial);
        if new_pages > self.free.len() {
            return Err(err(format!(
                "sequence {} needs {new_pages} more pages for {n} tokens, {} are free",
                id.0,
                self.free.len()
            )));
        }
        if shared_partial {
            let last = *pages.last().unwrap_or(&0);
            let fresh = self.alloc_page()?;
            let page_elems = self.page_size * self.row;
            let dtype = self.k[0].dtype();
            let bytes = |p: u32| dtype.bytes(p as usize * page_elems) as u64;
            // wgpu copies between different buffers only, so the page goes through a scratch one.
            let scratch = rec.device().empty("kv page copy", &[page_elems], dtype)?;
            for t in self.k.iter().chain(&self.v) {
                rec.copy(&t.view(bytes(last), &[page_elems], dtype)?, &scratch)?;
                rec.copy(&scratch, &t.view(bytes(fresh), &[page_elems], dtype)?)?;
            }
            self.refs[last as usize] -= 1;
            let s = self.seq_mut(id)?;
            *s.pages.last_mut().expect("partial page exists") = fresh;
        }
        while self.seq(id)?.pages.len() < needed {
            let p = self.alloc_page()?;
            self.seq_mut(id)?.pages.push(p);
        }
        self.seq_mut(id)?.len = len + n;
        Ok(len..len + n)
    }

    /// Keep the first `len` tokens of `id`; pages past them are released (freed when no other
    /// sequence shares them), so a sequence always holds exactly the pages its tokens need.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let ps = self.page_size;
        let s = self.seq_mut(id)?;
        if len > s.len {
            return Err(err(format!("cannot truncate a sequence of {} tokens to {len}", s.len)));
        }
        s.len = len;
        let dropped = s.pages.split_off(len.div_ceil(ps));
        for p in dropped {
            self.refs[p as usize] -= 1;
            if self.refs[p as usize] == 0 {
                self.free.push(p);
            }
        }
        Ok(())
    }

    /// The pool's bookkeeping (free list, page counts, sequences), to put back with
    /// [`KvPool::restore`] when work recorded after it is abandoned. Page contents are not part
    /// of it: they change only when a recording is submitted.
    pub fn checkpoint(&self) -> PoolCheckpoint {
        PoolCheckpoint { free: self.free.clone(), refs: self.refs.clone(), seqs: self.seqs.clone() }
    }

    /// Put back the bookkeeping of `c` (taken from this pool).
    pub fn restore(&mut self, c: PoolCheckpoint) {
        self.free = c.free;
        self.refs = c.refs;
        self.seqs = c.seqs;
    }

    /// Run `f` on the pool; if it fails, put the bookkeeping back as it was before (what `f`
    /// recorded for the GPU must then be dropped too).
    pub fn atomically<T, E>(
        &mut self,
        f: impl FnOnce(&mut KvPool) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let saved = self.checkpoint();
        let r = f(self);
        if r.is_err() {
            self.restore(saved);
        }
        r
    }

    /// The page table of `ids` (row i is `ids[i]`).
    pub fn page_table(&self, dev: &Device, ids: &[SeqId]) -> Result<PageTable> {
        let rows = ids.iter().map(|&id| self.seq(id).map(|s| s.pages.clone())).collect::<Result<Vec<_>>>()?;
        PageTable::new(dev, &rows, self.num_pages)
    }
}
