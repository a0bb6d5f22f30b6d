//! Finding the operator's own SSH sessions, so the first ruleset cannot cut them off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const TCP_ESTABLISHED: &str = "01";

/// Peers of established TCP connections to one of `ports`, from the text of
/// `/proc/net/tcp` or `/proc/net/tcp6` (which list sockets of the reader's own
/// network namespace).
pub fn established_peers(proc_net_tcp: &str, ports: &[u16]) -> Vec<IpAddr> {
    let mut peers = Vec::new();
    for line in proc_net_tcp.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) =
            (fields.get(1), fields.get(2), fields.get(3))
        else {
            continue;
        };
        if *state != TCP_ESTABLISHED {
            continue;
        }
        let Some(local_port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if !ports.contains(&local_port) {
            continue;
        }
        if let Some(addr) = remote.rsplit_once(':').and_then(|(a, _)| parse_hex_addr(a)) {
            let addr = palisade_model::net::canonical(addr);
            if !addr.is_loopback() && !peers.contains(&addr) {
                peers.push(addr);
            }
        }
    }
    peers
}

/// The kernel prints addresses as host-order 32-bit words in hex.
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let words = words?;
    match words.as_slice() {
        [w] => Some(IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Reads both tables of the current network namespace.
pub fn current_ssh_peers(ports: &[u16]) -> Vec<IpAddr> {
    let mut peers = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            for p in established_peers(&text, ports) {
                if !peers.contains(&p) {
                    peers.push(p);
                }
            }
        }
    }
    peers
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0201C80A:0016 0101C80A:D431 01 00000000:00000000 02:00062A8A 00000000     0        0 2 4 0 20 4 28 10 -1\n\
   2: 0201C80A:1F90 0301C80A:D432 01 00000000:00000000 02:00062A8A 00000000     0        0 3 4 0 20 4 28 10 -1\n";
        assert_eq!(
            established_peers(v4, &[22]),
            vec!["10.200.1.1".parse::<IpAddr>().unwrap()]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 0000000000000000FFFF00000201C80A:0016 0000000000000000FFFF00000501C80A:D431 01 0\n\
   1: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:C000 01 0\n";
        assert_eq!(
            established_peers(v6, &[22]),
            vec![
                "10.200.1.5".parse::<IpAddr>().unwrap(),
                "2001:db8::2".parse::<IpAddr>().unwrap()
            ]
        );
        assert!(established_peers("garbage\n1: zz:zz yy:yy 01\n", &[22]).is_empty());
    }
}
