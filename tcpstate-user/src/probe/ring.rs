//! The event ring buffer, read in place, and the kernel's event clock.
//!
//! aya's `RingBuf::next` publishes the consumer position after every record: a store
//! to the cache line every `bpf_ringbuf_reserve()` of the producer CPUs reads
//! (`__bpf_ringbuf_reserve()` loads `consumer_pos`), and a copy of each record. [`Ring`]
//! maps the same pages itself, hands records out by reference, and publishes the
//! position once per batch.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tcpstate_common::Event;

/// `BPF_RINGBUF_BUSY_BIT`, `BPF_RINGBUF_DISCARD_BIT`, `BPF_RINGBUF_HDR_SZ`
/// (include/uapi/linux/bpf.h).
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: usize = 8;
/// Consumed bytes after which the position is published even mid-batch, so that a
/// long drain frees space for the producers as it goes.
const PUBLISH_EVERY: usize = 256 << 10;

/// The probe's `EVENTS` ring buffer, mapped for reading (the layout of
/// `kernel/bpf/ringbuf.c`: a consumer page, a producer page, the data pages twice).
pub struct Ring {
    /// Owns the map's fd, which the mappings below do not need once made.
    map: RingBuf<MapData>,
    consumer: *mut u8,
    producer: *const u8,
    page: usize,
    size: usize,
    pos: usize,
}

// SAFETY: the mappings are owned by the Ring alone and freed with it.
unsafe impl Send for Ring {}

impl Ring {
    /// `size`: the map's byte size (its max_entries, a power of two).
    pub fn new(map: RingBuf<MapData>, size: u32) -> io::Result<Self> {
        let size = size as usize;
        assert!(size.is_power_of_two());
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.as_fd().as_raw_fd();
        let consumer = mmap(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(fd, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping what was just mapped.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        let mut r = Self {
            map,
            consumer,
            producer,
            page,
            size,
            pos: 0,
        };
        r.pos = r.consumer_pos().load(Ordering::Acquire);
        Ok(r)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page, mapped while self lives.
        unsafe { &*self.consumer.cast::<AtomicUsize>() }
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the first word of the producer page, mapped while self lives.
        unsafe { &*self.producer.cast::<AtomicUsize>() }.load(Ordering::Acquire)
    }

    /// Hands every committed record to `f`, in order, until the ring is empty or a
    /// record is still being written (it is read at the next call). Stops at the
    /// first error of `f`, after publishing what was consumed.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mask = self.size - 1;
        // SAFETY: the data pages start one page into the producer mapping.
        let data = unsafe { self.producer.add(self.page) };
        let mut prod = self.producer_pos();
        let mut published = self.pos;
        let mut result = Ok(());
        while self.pos != prod {
            let off = self.pos & mask;
            // SAFETY: `off < size` and records never pass the second copy of the data.
            let hdr = unsafe { &*data.add(off).cast::<AtomicU32>() };
            // Pairs with the producer's xchg at commit (`bpf_ringbuf_commit()`).
            let len = hdr.load(Ordering::Acquire);
            if len & BUSY != 0 {
                break;
            }
            let n = (len & !DISCARD) as usize;
            if len & DISCARD == 0 {
                // SAFETY: a committed record of `n` bytes after its header; the
                // kernel does not reuse it before the consumer position passes it.
                let rec = unsafe { std::slice::from_raw_parts(data.add(off + HDR), n) };
                if let Err(e) = f(rec) {
                    result = Err(e);
                    self.pos += (HDR + n).next_multiple_of(8);
                    break;
                }
            }
            self.pos += (HDR + n).next_multiple_of(8);
            if self.pos.wrapping_sub(published) >= PUBLISH_EVERY {
                self.consumer_pos().store(self.pos, Ordering::Release);
                published = self.pos;
            }
            if self.pos == prod {
                prod = self.producer_pos();
            }
        }
        if self.pos != published {
            self.consumer_pos().store(self.pos, Ordering::Release);
        }
        result
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.as_fd().as_raw_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the two mappings made in `new`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast_mut().cast(), self.page + 2 * self.size);
        }
    }
}

fn mmap(fd: RawFd, len: usize, prot: i32, offset: usize) -> io::Result<*mut u8> {
    // SAFETY: a new shared mapping of the map's fd; checked for failure.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// An [`Event`] in a ring-buffer record, in place; `None` if the record is too short.
/// Records start 8 bytes after an 8-aligned header, so they are aligned for `Event`.
pub fn event_of(bytes: &[u8]) -> Option<&Event> {
    if bytes.len() < std::mem::size_of::<Event>()
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<Event>())
    {
        return None;
    }
    // SAFETY: length and alignment checked; Event is plain old data (integers and
    // byte arrays, valid for any bytes).
    Some(unsafe { &*bytes.as_ptr().cast::<Event>() })
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`, so of every event.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_need_a_whole_event() {
        // SAFETY: Event is plain old data; all zeros is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.cookie = 42;
        ev.oldstate = 7;
        ev.newstate = 2;
        let bytes: &[u8; std::mem::size_of::<Event>()] =
            // SAFETY: reading a POD struct as its bytes.
            unsafe { &*(&ev as *const Event).cast() };
        assert_eq!(event_of(bytes), Some(&ev));
        assert_eq!(event_of(&bytes[..10]), None);
    }
}
