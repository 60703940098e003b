//! The event ring buffer's records, and the kernel's event clock.

use tcpstate_common::Event;

/// Reads an [`Event`] from a ring-buffer record; `None` if the record is too short.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data, read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
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
    fn decode_needs_a_whole_record() {
        // SAFETY: Event is plain old data; all zeros is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.cookie = 42;
        ev.oldstate = 7;
        ev.newstate = 2;
        let bytes: [u8; std::mem::size_of::<Event>()] = unsafe { std::mem::transmute(ev) };
        assert_eq!(decode(&bytes), Some(ev));
        assert_eq!(decode(&bytes[..10]), None);
    }
}
