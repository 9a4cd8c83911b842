//! Zeroed, cache-line aligned block memory: anonymous `mmap` with transparent huge pages for
//! big filters, the global allocator for small ones.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// One 512-bit block: exactly one cache line, so a key's k bits are one memory access.
#[repr(C, align(64))]
pub(crate) struct Block(pub(crate) [AtomicU64; 8]);

/// Block size and alignment: one cache line.
const BLOCK_SIZE: usize = std::mem::size_of::<Block>();
/// Size of an x86-64 / aarch64 (4 KiB granule) transparent huge page; also the size from
/// which filters use `mmap`: below it huge pages cannot help.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Owner of a zeroed array of [`Block`]s.
pub(crate) struct Memory {
    ptr: NonNull<Block>,
    blocks: usize,
    /// Bytes actually held: the mapping length (rounded up to whole huge pages) for `mmap`.
    held: usize,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `std::alloc::alloc_zeroed` with 64-byte alignment.
    Heap,
    /// Anonymous private mapping, released with `munmap`.
    #[cfg(unix)]
    Mmap,
}

// SAFETY: `Memory` exclusively owns its allocation, and the only things in it are atomics,
// which may be shared and sent between threads.
unsafe impl Send for Memory {}
// SAFETY: as above; `&Memory` only hands out `&[Block]`, whose words are atomics.
unsafe impl Sync for Memory {}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("blocks", &self.blocks)
            .field("held", &self.held)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Memory {
    /// Allocates `blocks` zeroed blocks. `blocks` must be ≥ 1 (checked by the caller through
    /// `Geometry::validate`).
    pub(crate) fn zeroed(blocks: usize) -> io::Result<Memory> {
        assert!(blocks >= 1, "Memory::zeroed needs at least one block");
        let bytes = blocks.checked_mul(BLOCK_SIZE).ok_or_else(|| {
            io::Error::new(io::ErrorKind::OutOfMemory, "block count overflows usize")
        })?;
        #[cfg(unix)]
        if bytes >= HUGE_PAGE {
            return Self::mmap(blocks, bytes);
        }
        Self::heap(blocks, bytes)
    }

    fn heap(blocks: usize, bytes: usize) -> io::Result<Memory> {
        let layout = std::alloc::Layout::from_size_align(bytes, BLOCK_SIZE)
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
        // SAFETY: the layout has non-zero size (blocks ≥ 1).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw.cast::<Block>()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::OutOfMemory, "the allocator returned null")
        })?;
        Ok(Memory {
            ptr,
            blocks,
            held: bytes,
            kind: Kind::Heap,
        })
    }

    /// Maps whole, 2 MiB-aligned huge pages: the kernel only backs aligned 2 MiB ranges with
    /// transparent huge pages, so map one extra page and trim the unaligned ends.
    #[cfg(unix)]
    fn mmap(blocks: usize, bytes: usize) -> io::Result<Memory> {
        let too_big = || io::Error::new(io::ErrorKind::OutOfMemory, "size overflows usize");
        let held = bytes
            .checked_next_multiple_of(HUGE_PAGE)
            .ok_or_else(too_big)?;
        let mapped = held.checked_add(HUGE_PAGE).ok_or_else(too_big)?;
        // SAFETY: a fresh anonymous private mapping with no address hint aliases nothing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let head = aligned - start;
        let tail = mapped - head - held;
        // SAFETY: both ranges lie inside the mapping just created, are page-aligned (mmap
        // returns page-aligned memory and HUGE_PAGE is a multiple of the page size) and
        // nothing points into them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + held) as *mut libc::c_void, tail);
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: advice on a range we own; MADV_HUGEPAGE changes no contents. It fails
        // harmlessly (EINVAL) where transparent huge pages are compiled out, so the result
        // is ignored: the filter then works on 4 KiB pages, only slower.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, held, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(aligned as *mut Block).ok_or_else(io::Error::last_os_error)?;
        Ok(Memory {
            ptr,
            blocks,
            held,
            kind: Kind::Mmap,
        })
    }

    /// The blocks, shared: reads and `fetch_or`s go through the atomics.
    #[inline(always)]
    pub(crate) fn blocks(&self) -> &[Block] {
        // SAFETY: `ptr` points to `blocks` initialised (zeroed or written) `Block`s that live
        // as long as `self`; all-zero bytes are a valid `AtomicU64`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.blocks) }
    }

    /// The blocks as raw bytes, for exclusive bulk writes (decoding).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` proves no other reference to the blocks exists; the memory is
        // `blocks * 64` initialised bytes, and any byte pattern is a valid `AtomicU64`.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.blocks * BLOCK_SIZE)
        }
    }

    /// Bytes held from the OS or allocator (≥ the blocks' size).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Address range of a mapped (huge-page advised) allocation, for diagnostics
    /// (`/proc/self/smaps`); `None` for heap allocations.
    #[cfg(target_os = "linux")]
    pub(crate) fn mapped_range(&self) -> Option<std::ops::Range<usize>> {
        let start = self.ptr.as_ptr() as usize;
        (self.kind == Kind::Mmap).then_some(start..start + self.held)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        match self.kind {
            Kind::Heap => {
                let layout = std::alloc::Layout::from_size_align(self.held, BLOCK_SIZE)
                    .expect("layout was valid at allocation");
                // SAFETY: allocated in `heap` with exactly this layout and not freed since.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), layout) };
            }
            #[cfg(unix)]
            Kind::Mmap => {
                // SAFETY: the range is what `mmap` left mapped after trimming; nothing
                // borrows it any more since we are being dropped.
                unsafe { libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.held) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn block_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Block>(), 64);
        assert_eq!(std::mem::align_of::<Block>(), 64);
    }

    #[test]
    fn small_and_large_allocations_are_zeroed_aligned_and_writable() {
        for blocks in [
            1,
            3,
            HUGE_PAGE / 64 - 1,
            HUGE_PAGE / 64,
            HUGE_PAGE / 64 * 3 + 5,
        ] {
            let mut memory = Memory::zeroed(blocks).unwrap();
            assert_eq!(memory.blocks().len(), blocks);
            assert!(memory.held() >= blocks * 64);
            let addr = memory.blocks().as_ptr() as usize;
            assert_eq!(addr % 64, 0);
            if cfg!(unix) && blocks * 64 >= HUGE_PAGE {
                assert_eq!(addr % HUGE_PAGE, 0, "mmap'd filters start on a huge page");
                assert_eq!(memory.held() % HUGE_PAGE, 0);
            }
            assert!(memory.bytes_mut().iter().all(|&b| b == 0));
            let last = &memory.blocks()[blocks - 1].0[7];
            last.fetch_or(1 << 63, Relaxed);
            assert_eq!(last.load(Relaxed), 1 << 63);
            assert_eq!(*memory.bytes_mut().last().unwrap(), 0x80);
        }
    }
}
