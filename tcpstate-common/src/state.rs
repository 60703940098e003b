//! TCP states as numbered in the kernel's `include/net/tcp_states.h`, and their names
//! as `ss` and the kernel's `tcp_state_names` spell them (with `_` for `-`).

pub const ESTABLISHED: i32 = 1;
pub const SYN_SENT: i32 = 2;
pub const SYN_RECV: i32 = 3;
pub const FIN_WAIT1: i32 = 4;
pub const FIN_WAIT2: i32 = 5;
pub const TIME_WAIT: i32 = 6;
pub const CLOSE: i32 = 7;
pub const CLOSE_WAIT: i32 = 8;
pub const LAST_ACK: i32 = 9;
pub const LISTEN: i32 = 10;
pub const CLOSING: i32 = 11;
pub const NEW_SYN_RECV: i32 = 12;
pub const BOUND_INACTIVE: i32 = 13;

/// Every state this build knows, in kernel order: `ALL[n - 1]` is state `n`.
pub const ALL: [(i32, &str); 13] = [
    (ESTABLISHED, "ESTABLISHED"),
    (SYN_SENT, "SYN_SENT"),
    (SYN_RECV, "SYN_RECV"),
    (FIN_WAIT1, "FIN_WAIT1"),
    (FIN_WAIT2, "FIN_WAIT2"),
    (TIME_WAIT, "TIME_WAIT"),
    (CLOSE, "CLOSE"),
    (CLOSE_WAIT, "CLOSE_WAIT"),
    (LAST_ACK, "LAST_ACK"),
    (LISTEN, "LISTEN"),
    (CLOSING, "CLOSING"),
    (NEW_SYN_RECV, "NEW_SYN_RECV"),
    (BOUND_INACTIVE, "BOUND_INACTIVE"),
];

/// The name of state `n`, or `None` for a number this build does not know (newer
/// kernel): print those as `UNKNOWN(n)`, never panic.
pub const fn name(n: i32) -> Option<&'static str> {
    if n >= 1 && n as usize <= ALL.len() {
        Some(ALL[n as usize - 1].1)
    } else {
        None
    }
}

/// Whether `n` is a state this build knows.
pub const fn is_known(n: i32) -> bool {
    name(n).is_some()
}

/// The state named `s` (surrounding blanks and case ignored), `None` if no state has
/// that name.
pub fn from_name(s: &str) -> Option<i32> {
    let s = s.trim();
    let mut i = 0;
    while i < ALL.len() {
        if ALL[i].1.eq_ignore_ascii_case(s) {
            return Some(ALL[i].0);
        }
        i += 1;
    }
    None
}

/// The bit of state `n` in a state set (`Filter::states`, `1 << n`). Numbers are
/// taken modulo 32, as the probe does; every known state is below 32.
#[inline(always)]
pub const fn bit(n: i32) -> u32 {
    1 << (n & 31)
}

/// A state set (see [`bit`]) of the given states.
pub const fn mask(states: &[i32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < states.len() {
        m |= bit(states[i]);
        i += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_kernel_order() {
        for (i, (n, _)) in ALL.iter().enumerate() {
            assert_eq!(*n as usize, i + 1);
        }
    }

    #[test]
    fn names_round_trip() {
        for (n, nm) in ALL {
            assert_eq!(name(n), Some(nm));
            assert_eq!(from_name(nm), Some(n));
            assert!(is_known(n));
        }
        assert_eq!(name(CLOSE_WAIT), Some("CLOSE_WAIT"));
        assert_eq!(name(TIME_WAIT), Some("TIME_WAIT"));
    }

    #[test]
    fn unknown_numbers_have_no_name() {
        for n in [0, 14, 31, 255, -1, i32::MIN, i32::MAX] {
            assert_eq!(name(n), None, "{n}");
            assert!(!is_known(n));
        }
    }

    #[test]
    fn parsing_ignores_case_and_blanks_only() {
        assert_eq!(from_name("close_wait"), Some(CLOSE_WAIT));
        assert_eq!(from_name("  Listen\n"), Some(LISTEN));
        assert_eq!(from_name("CLOSED_WAIT"), None);
        assert_eq!(from_name("CLOSE-WAIT"), None);
        assert_eq!(from_name(""), None);
        assert_eq!(from_name("CLOSE WAIT"), None);
        // A prefix is not a name.
        assert_eq!(from_name("FIN_WAIT"), None);
    }

    #[test]
    fn bits_and_masks() {
        assert_eq!(bit(CLOSE_WAIT), 1 << 8);
        assert_eq!(bit(32 + LISTEN), bit(LISTEN));
        assert_eq!(mask(&[]), 0);
        assert_eq!(mask(&[CLOSE_WAIT, LISTEN]), (1 << 8) | (1 << 10));
        assert_eq!(mask(&[LISTEN, LISTEN]), 1 << 10);
    }
}
