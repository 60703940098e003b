//! The user's filters as pure rules, written once for both sides: the probe calls
//! them on its [`Filter`](crate::Filter) (fixed lists of at most
//! [`FILTER_MAX`](crate::FILTER_MAX)), userspace on its own lists of any length.
//! Filters combine with AND; the values of one list with OR; an empty list matches
//! everything. Every function is a bounded loop over a slice with no allocation, so
//! the probe's copy inlines into verifier-friendly code.

use crate::{AF_INET, AF_INET6};

/// Whether `v` is among the first `n` entries of `list` (entries past `list.len()`
/// are never read). The loop runs over the whole slice with `n` as a guard, so for
/// the probe's fixed arrays its bound is a constant.
#[inline(always)]
pub const fn listed_u16(list: &[u16], n: usize, v: u16) -> bool {
    let mut i = 0;
    while i < list.len() {
        if i < n && list[i] == v {
            return true;
        }
        i += 1;
    }
    false
}

/// [`listed_u16`] for u32 values (pids).
#[inline(always)]
pub const fn listed_u32(list: &[u32], n: usize, v: u32) -> bool {
    let mut i = 0;
    while i < list.len() {
        if i < n && list[i] == v {
            return true;
        }
        i += 1;
    }
    false
}

/// The state filter: `mask` holds [`state::bit`](crate::state::bit) of each state
/// asked for (0 = any); the old or the new state must be one of them.
#[inline(always)]
pub const fn states_pass(mask: u32, old: i32, new: i32) -> bool {
    mask == 0 || mask & (crate::state::bit(old) | crate::state::bit(new)) != 0
}

/// The owner filter over the first `n` of `pids` (0 = any). An unknown owner (pid 0)
/// never matches a list: the command line accepts only pids >= 1.
#[inline(always)]
pub const fn pid_passes(pids: &[u32], n: usize, pid: u32) -> bool {
    n == 0 || listed_u32(pids, n, pid)
}

/// Whether an IPv6 address is IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2), as
/// `Ipv6Addr::to_ipv4_mapped` decides.
#[inline(always)]
pub const fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// The family a user sees and `-4`/`-6` select: 4 for IPv4 sockets and for IPv6
/// sockets whose two addresses are both IPv4-mapped (a dual-stack socket talking
/// IPv4), else 6. (`family` is the kernel's AF_INET or AF_INET6.)
#[inline(always)]
pub const fn user_family(family: u16, saddr: &[u8; 16], daddr: &[u8; 16]) -> u8 {
    if family == AF_INET || (family == AF_INET6 && is_v4_mapped(saddr) && is_v4_mapped(daddr)) {
        4
    } else {
        6
    }
}

/// The family filter: `want` is 0 (any), 4 or 6; `user_family` from [`user_family`].
#[inline(always)]
pub const fn family_passes(want: u32, user_family: u8) -> bool {
    want == 0 || want == user_family as u32
}

/// A port list and how many of its entries are used (0 = any port).
pub type Ports<'a> = (&'a [u16], usize);

/// The port filters: `ports` must list the local or the remote port, `lports` the
/// local one, `rports` the remote one.
#[inline(always)]
pub const fn ports_pass(
    ports: Ports<'_>,
    lports: Ports<'_>,
    rports: Ports<'_>,
    sport: u16,
    dport: u16,
) -> bool {
    (ports.1 == 0 || listed_u16(ports.0, ports.1, sport) || listed_u16(ports.0, ports.1, dport))
        && (lports.1 == 0 || listed_u16(lports.0, lports.1, sport))
        && (rports.1 == 0 || listed_u16(rports.0, rports.1, dport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state;

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut a = [0; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        a
    }

    #[test]
    fn lists_honour_their_length() {
        let l = [80u16, 443, 8080, 0, 0, 0, 0, 0];
        assert!(listed_u16(&l, 3, 8080));
        assert!(!listed_u16(&l, 2, 8080), "past n");
        assert!(!listed_u16(&l, 0, 80), "empty list lists nothing");
        assert!(!listed_u16(&l, 3, 0), "unused zero entries never match");
        assert!(
            listed_u16(&l, 100, 0),
            "n beyond the slice reads only the slice"
        );
        assert!(!listed_u16(&[], 5, 1));
        let p = [7u32, 9];
        assert!(listed_u32(&p, 2, 9));
        assert!(!listed_u32(&p, 1, 9));
    }

    #[test]
    fn states_old_or_new() {
        let m = state::mask(&[state::CLOSE_WAIT]);
        assert!(states_pass(0, state::LISTEN, state::CLOSE));
        assert!(states_pass(m, state::ESTABLISHED, state::CLOSE_WAIT));
        assert!(states_pass(m, state::CLOSE_WAIT, state::LAST_ACK));
        assert!(!states_pass(m, state::LAST_ACK, state::CLOSE));
        let two = state::mask(&[state::LISTEN, state::SYN_SENT]);
        assert!(states_pass(two, state::CLOSE, state::SYN_SENT));
        assert!(states_pass(two, state::LISTEN, state::SYN_RECV));
        assert!(!states_pass(two, state::SYN_RECV, state::ESTABLISHED));
    }

    #[test]
    fn pids() {
        assert!(
            pid_passes(&[], 0, 0),
            "no list: even an unknown owner passes"
        );
        assert!(pid_passes(&[3, 7], 2, 7));
        assert!(!pid_passes(&[3, 7], 2, 5));
        assert!(
            !pid_passes(&[3, 7], 2, 0),
            "unknown owner never matches a list"
        );
        assert!(!pid_passes(&[3, 7], 1, 7));
    }

    #[test]
    fn mapped_detection() {
        assert!(is_v4_mapped(&mapped([127, 0, 0, 1])));
        assert!(is_v4_mapped(&mapped([0, 0, 0, 0])));
        assert!(!is_v4_mapped(&[0; 16]), "::");
        let mut lo6 = [0; 16];
        lo6[15] = 1;
        assert!(!is_v4_mapped(&lo6), "::1");
        // IPv4-compatible (deprecated ::a.b.c.d) is not mapped.
        let mut compat = [0; 16];
        compat[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert!(!is_v4_mapped(&compat));
        // Any non-zero byte in the prefix breaks it.
        for i in 0..12 {
            let mut a = mapped([1, 2, 3, 4]);
            a[i] ^= 0x01;
            assert!(!is_v4_mapped(&a), "byte {i}");
        }
        // Agrees with std on a sweep of prefixes.
        for b in [0u8, 1, 0xfe, 0xff] {
            for i in 0..12 {
                let mut a = mapped([192, 0, 2, 1]);
                a[i] = b;
                let std = std_mapped(&a);
                assert_eq!(is_v4_mapped(&a), std, "{a:?}");
            }
        }
    }

    /// `Ipv6Addr::to_ipv4_mapped`, written out (no std in this crate's tests either).
    fn std_mapped(a: &[u8; 16]) -> bool {
        a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
    }

    #[test]
    fn families() {
        let v4 = [0u8; 16];
        let m = mapped([127, 0, 0, 1]);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(user_family(AF_INET, &v4, &v4), 4);
        assert_eq!(user_family(AF_INET6, &m, &m), 4);
        assert_eq!(user_family(AF_INET6, &m, &v6), 6, "one side only");
        assert_eq!(user_family(AF_INET6, &v6, &m), 6);
        assert_eq!(
            user_family(AF_INET6, &m, &[0; 16]),
            6,
            "a listener: daddr ::"
        );
        assert_eq!(user_family(AF_INET6, &v6, &v6), 6);
        assert!(family_passes(0, 4) && family_passes(0, 6));
        assert!(family_passes(4, 4) && !family_passes(4, 6));
        assert!(family_passes(6, 6) && !family_passes(6, 4));
    }

    #[test]
    fn ports_any_local_remote() {
        let none: Ports = (&[], 0);
        let list = [1u16, 50000];
        assert!(ports_pass(none, none, none, 8080, 50000));
        assert!(ports_pass((&list, 2), none, none, 8080, 50000), "remote");
        assert!(ports_pass((&list, 2), none, none, 50000, 8080), "local");
        assert!(!ports_pass((&list, 1), none, none, 8080, 50000));
        assert!(ports_pass(none, (&[8080], 1), none, 8080, 50000));
        assert!(!ports_pass(none, (&[50000], 1), none, 8080, 50000));
        assert!(ports_pass(none, none, (&[50000], 1), 8080, 50000));
        assert!(!ports_pass(none, none, (&[8080], 1), 8080, 50000));
        // AND across lists.
        assert!(!ports_pass((&list, 2), (&[9], 1), none, 8080, 50000));
        assert!(ports_pass(
            (&list, 2),
            (&[8080], 1),
            (&[50000], 1),
            8080,
            50000
        ));
        // An unused list with stale entries matches everything.
        assert!(ports_pass((&[9, 9], 0), (&[9], 0), (&[9], 0), 1, 2));
    }
}
