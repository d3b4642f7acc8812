//! A fuzzer for the kernel programs (issue 11): mutated frames through
//! BPF_PROG_TEST_RUN, XDP and tc alike, with bindings installed.
//!
//! The frames start as what the relay sees (ChannelData of bound channels,
//! peers' datagrams, STUN, other UDP) and are mutated: bits flipped, header
//! fields set to edge values, addresses and ports swapped for another
//! binding's, frames cut or extended, and checksums made right again half
//! of the time, so that mutants also get past the checks that wrong
//! checksums would stop.
//!
//! The oracle, independent of the programs' code: a frame either leaves
//! byte for byte as it came, or it is a relayed frame, and then
//! - the input was a plain datagram (Ethernet, IPv4 without options or IPv6
//!   without extension headers, consistent lengths, TTL above 1, a valid
//!   IPv4 header checksum) of one binding's exact 5-tuple, and for a client
//!   unpadded ChannelData of that binding's channel;
//! - the output is that binding's datagram in the other direction: its
//!   exact 5-tuple, the same data, one hop less, IPv4 header checksum
//!   right, and the UDP checksum right exactly when the input's was (an
//!   IPv4 datagram without one stays without).
//!
//! No verdict drops a frame. `TURNX_KERNEL_FUZZ_FRAMES` sets how many frames
//! (default 200 000, each through both programs; `cargo xtask fuzz` runs a
//! million), `TURNX_KERNEL_FUZZ_SEED` the seed.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use testkit::frame::{UdpFrame, channel_data, internet_checksum, stun_binding_request};
use turnx::xdp::{KernelBinding, XdpRelay};

const XDP_PASS: u32 = 2;
/// tc verdicts that hand the packet on: TC_ACT_OK and TCX_NEXT (-1).
const TC_PASSES: [u32; 2] = [0, u32::MAX];
const LISTEN_PORT: u16 = 3478;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Bindings of both families; two share a client, two a relayed address.
fn bindings() -> Vec<KernelBinding> {
    let v4 = |client: &str, channel, relayed: &str, peer: &str, slot| KernelBinding {
        client: addr(client),
        server: addr("198.18.0.2:3478"),
        channel,
        relayed: addr(relayed),
        peer: addr(peer),
        slot,
        buckets: Default::default(),
        expires: 0,
    };
    let v6 = |client: &str, channel, relayed: &str, peer: &str, slot| KernelBinding {
        client: addr(client),
        server: addr("[fd00:18::2]:3478"),
        channel,
        relayed: addr(relayed),
        peer: addr(peer),
        slot,
        buckets: Default::default(),
        expires: 0,
    };
    vec![
        v4(
            "198.18.0.1:50000",
            0x4000,
            "198.19.0.1:50002",
            "198.19.0.2:3480",
            0,
        ),
        v4(
            "198.18.0.1:50000",
            0x4001,
            "198.19.0.1:50002",
            "198.19.0.3:3480",
            1,
        ),
        v4(
            "198.18.0.9:40000",
            0x4FFF,
            "198.19.0.1:50004",
            "198.19.0.2:3480",
            2,
        ),
        v6(
            "[fd00:18::1]:50000",
            0x4000,
            "[fd00:19::1]:50002",
            "[fd00:19::2]:3480",
            3,
        ),
        v6(
            "[fd00:18::1]:50000",
            0x4ABC,
            "[fd00:19::1]:50006",
            "[fd00:19::3]:9",
            4,
        ),
    ]
}

/// xorshift64*: a small, seedable generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A plain UDP datagram in an untagged Ethernet frame, as parsed here
/// without the programs' code.
#[derive(Debug)]
struct Plain<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    payload: &'a [u8],
    /// IPv4 only: type of service, identification, flags and fragment
    /// offset, which the relay keeps.
    kept: [u8; 5],
    /// The IPv4 header checksum holds (always true for IPv6).
    ip_ok: bool,
    /// The UDP checksum field is zero (allowed for IPv4 only).
    udp_zero: bool,
    /// The UDP checksum holds.
    udp_ok: bool,
}

fn parse(frame: &[u8]) -> Option<Plain<'_>> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    let (src, dst, ttl, udp, pseudo, kept, ip_ok) = match ether_type {
        0x0800 => {
            let header = ip.get(..20)?;
            if header[0] != 0x45 || header[9] != 17 {
                return None;
            }
            let total = u16::from_be_bytes([header[2], header[3]]) as usize;
            // Fragments are the stack's.
            if u16::from_be_bytes([header[6], header[7]]) & 0x3FFF != 0 || total < 28 {
                return None;
            }
            let udp = ip.get(20..total)?;
            let src = IpAddr::from(<[u8; 4]>::try_from(&header[12..16]).unwrap());
            let dst = IpAddr::from(<[u8; 4]>::try_from(&header[16..20]).unwrap());
            let mut pseudo = header[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            let kept = [header[1], header[4], header[5], header[6], header[7]];
            (
                src,
                dst,
                header[8],
                udp,
                pseudo,
                kept,
                internet_checksum(&[header]) == 0,
            )
        }
        0x86DD => {
            let header = ip.get(..40)?;
            if header[0] >> 4 != 6 || header[6] != 17 {
                return None;
            }
            let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
            let udp = ip.get(40..40 + payload_len)?;
            let src = IpAddr::from(<[u8; 16]>::try_from(&header[8..24]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&header[24..40]).unwrap());
            let mut pseudo = header[8..40].to_vec();
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            (src, dst, header[7], udp, pseudo, [0; 5], true)
        }
        _ => return None,
    };
    if udp.len() < 8 || u16::from_be_bytes([udp[4], udp[5]]) as usize != udp.len() {
        return None;
    }
    let mut pseudo = pseudo;
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    let udp_zero = udp[6..8] == [0, 0];
    Some(Plain {
        src: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
        ttl,
        payload: &udp[8..],
        kept,
        ip_ok,
        udp_zero,
        udp_ok: internet_checksum(&[&pseudo, udp]) == 0,
    })
}

/// Why a relayed frame is not one the oracle allows.
fn check_relayed(bindings: &[KernelBinding], input: &[u8], output: &[u8]) -> Result<(), String> {
    let inp = parse(input).ok_or("relayed a frame that is not a plain UDP datagram")?;
    let out = parse(output).ok_or("the relayed frame is not a plain UDP datagram")?;
    if !inp.ip_ok {
        return Err("relayed a frame with a wrong IPv4 header checksum".into());
    }
    if inp.ttl <= 1 || out.ttl != inp.ttl - 1 {
        return Err(format!("TTL {} became {}", inp.ttl, out.ttl));
    }
    if !out.ip_ok || out.kept != inp.kept {
        return Err("the IP header is not the input's, one hop on".into());
    }
    let v4_zero = inp.src.is_ipv4() && inp.udp_zero;
    if v4_zero != (out.src.is_ipv4() && out.udp_zero) || (!v4_zero && inp.udp_ok != out.udp_ok) {
        return Err(format!(
            "UDP checksum: input zero {} valid {}, output zero {} valid {}",
            inp.udp_zero, inp.udp_ok, out.udp_zero, out.udp_ok
        ));
    }
    for binding in bindings {
        if (inp.src, inp.dst) == (binding.client, binding.server) {
            let data = &inp.payload[4.min(inp.payload.len())..];
            if inp.payload == channel_data(binding.channel, data, false)
                && (out.src, out.dst) == (binding.relayed, binding.peer)
                && out.payload == data
            {
                return Ok(());
            }
        }
        if (inp.src, inp.dst) == (binding.peer, binding.relayed)
            && (out.src, out.dst) == (binding.server, binding.client)
            && out.payload == channel_data(binding.channel, inp.payload, false)
        {
            return Ok(());
        }
    }
    Err(format!(
        "no binding relays {} -> {} as {} -> {}",
        inp.src, inp.dst, out.src, out.dst
    ))
}

/// A frame as the relay sees them, before mutation.
fn seed_frame(rng: &mut Rng, bindings: &[KernelBinding]) -> Vec<u8> {
    let binding = &bindings[rng.below(bindings.len())];
    let len = rng.below(1300);
    let data = rng.bytes(len);
    let mut frame = match rng.below(6) {
        0 | 1 => UdpFrame::new(
            binding.client,
            binding.server,
            &channel_data(binding.channel, &data, false),
        ),
        2 | 3 => UdpFrame::new(binding.peer, binding.relayed, &data),
        4 => UdpFrame::new(
            binding.client,
            binding.server,
            &channel_data(binding.channel, &data, rng.below(2) == 0),
        ),
        _ => UdpFrame::new(
            binding.client,
            binding.server,
            &stun_binding_request([7; 12]),
        ),
    };
    frame.ttl = [64, 2, 1, 0, 255][rng.below(5)];
    frame.build().bytes
}

/// Offsets worth aiming at in an untagged frame: EtherType, IP version,
/// lengths, fragment bits, TTL, protocol, checksums, ports, the ChannelData
/// header, for both families.
const FIELDS: [usize; 22] = [
    12, 13, 14, 16, 17, 20, 22, 23, 24, 34, 36, 38, 39, 40, 41, 42, 43, 18, 19, 21, 54, 56,
];

/// Mutates `frame` in one to three ways.
fn mutate(rng: &mut Rng, bindings: &[KernelBinding], frame: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 if !frame.is_empty() => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = FIELDS[rng.below(FIELDS.len())];
                if at < frame.len() {
                    frame[at] = [0, 1, 0x40, 0x45, 0x4F, 0x60, 0x7F, 0x80, 0xFF][rng.below(9)];
                }
            }
            2 => frame.truncate(rng.below(frame.len() + 1)),
            3 => {
                let len = 1 + rng.below(64);
                let extra = rng.bytes(len);
                frame.extend_from_slice(&extra);
            }
            4 => {
                // Another binding's address or port where this one's was.
                let other = &bindings[rng.below(bindings.len())];
                let endpoint =
                    [other.client, other.server, other.relayed, other.peer][rng.below(4)];
                let (ip, port): (Vec<u8>, _) = match endpoint.ip() {
                    IpAddr::V4(v4) => (v4.octets().to_vec(), endpoint.port()),
                    IpAddr::V6(v6) => (v6.octets().to_vec(), endpoint.port()),
                };
                let v6 = frame.get(12..14) == Some(&[0x86, 0xDD][..]);
                let (addresses, ports) = if v6 { (22, 54) } else { (26, 34) };
                let at = if rng.below(2) == 0 {
                    addresses + rng.below(2) * ip.len()
                } else {
                    ports + rng.below(2) * 2
                };
                let bytes = if at >= ports {
                    &port.to_be_bytes()[..]
                } else {
                    &ip
                };
                if at + bytes.len() <= frame.len() {
                    frame[at..at + bytes.len()].copy_from_slice(bytes);
                }
            }
            5 => {
                let at = 42 + rng.below(20);
                if at + 2 <= frame.len() {
                    let channel = [0x4000u16, 0x4001, 0x4FFF, 0x4ABC, 0x5000][rng.below(5)];
                    frame[at..at + 2].copy_from_slice(&channel.to_be_bytes());
                }
            }
            _ => {
                let at = rng.below(frame.len() + 1);
                let len = rng.below(8);
                let extra = rng.bytes(len);
                frame.splice(at..at, extra);
            }
        }
    }
    if rng.below(2) == 0 {
        fix_checksums(frame);
    }
}

/// Makes the IPv4 header checksum and the UDP checksum right for the
/// frame's current lengths, where they can be found.
fn fix_checksums(frame: &mut [u8]) {
    let v6 = frame.get(12..14) == Some(&[0x86, 0xDD][..]);
    let (ip_len, udp_at) = if v6 { (40, 54) } else { (20, 34) };
    if frame.len() < udp_at + 8 {
        return;
    }
    if !v6 {
        frame[24..26].fill(0);
        let sum = internet_checksum(&[&frame[14..34]]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    }
    let udp_len = u16::from_be_bytes([frame[udp_at + 4], frame[udp_at + 5]]) as usize;
    let Some(end) = (udp_at + udp_len <= frame.len()).then_some(udp_at + udp_len) else {
        return;
    };
    if udp_len < 8 {
        return;
    }
    let mut pseudo = frame[14 + ip_len - if v6 { 32 } else { 8 }..14 + ip_len].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame[udp_at + 6..udp_at + 8].fill(0);
    let sum = internet_checksum(&[&pseudo, &frame[udp_at..end]]);
    frame[udp_at + 6..udp_at + 8].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn mutated_frames_are_relayed_exactly_or_passed_unchanged() {
    let Some(object) =
        common::xdp_object_or_skip("mutated_frames_are_relayed_exactly_or_passed_unchanged")
    else {
        return;
    };
    let frames: usize = std::env::var("TURNX_KERNEL_FUZZ_FRAMES")
        .ok()
        .map(|n| n.parse().expect("TURNX_KERNEL_FUZZ_FRAMES is a count"))
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("TURNX_KERNEL_FUZZ_SEED")
        .ok()
        .map(|n| n.parse().expect("TURNX_KERNEL_FUZZ_SEED is a number"))
        .unwrap_or_else(|| std::process::id() as u64 * 0x9E37_79B9 + 1);
    println!("kernel fuzz: {frames} frames, TURNX_KERNEL_FUZZ_SEED={seed}");

    let options = turnx::xdp::LoadOptions {
        route_in_stack: true,
        ..Default::default()
    };
    let mut xdp = XdpRelay::load_with(object, "info", &options).expect("loading the programs");
    xdp.set_listen_ports(&[LISTEN_PORT]).unwrap();
    let bindings = bindings();
    for binding in &bindings {
        xdp.install(binding).unwrap();
    }
    let ns = common::Netns::new("txz");
    let mut rng = Rng(seed);
    // [program][passed, relayed]
    let mut outcomes = [[0usize; 2]; 2];
    let mut not_skbs = 0;
    let started = Instant::now();
    ns.run(|| {
        for n in 0..frames {
            let mut frame = seed_frame(&mut rng, &bindings);
            // A few unmutated seeds keep the relayed case in the mix.
            if n % 8 != 0 {
                mutate(&mut rng, &bindings, &mut frame);
            }
            // BPF_PROG_TEST_RUN refuses frames without an Ethernet header,
            // which no device delivers either.
            if frame.len() < 14 {
                continue;
            }
            let xdp_run = xdp.run_on_frame(&frame, 1).unwrap();
            // The kernel builds no skb from some frames a device could
            // deliver (an IPv4 EtherType before a cut IP header, say):
            // those run through XDP only.
            let Ok(tc_run) = xdp.run_tc_on_frame(&frame) else {
                not_skbs += 1;
                continue;
            };
            let runs = [("XDP", xdp_run, [XDP_PASS; 2]), ("tc", tc_run, TC_PASSES)];
            for (program, (name, run, passes)) in runs.into_iter().enumerate() {
                assert!(
                    passes.contains(&run.action),
                    "{name} verdict {} for frame {n} (seed {seed}): {frame:02x?}",
                    run.action
                );
                if run.output == frame {
                    outcomes[program][0] += 1;
                    continue;
                }
                if let Err(why) = check_relayed(&bindings, &frame, &run.output) {
                    panic!(
                        "{name}, frame {n} (seed {seed}): {why}\ninput  {frame:02x?}\noutput {:02x?}",
                        run.output
                    );
                }
                outcomes[program][1] += 1;
            }
        }
    });
    let elapsed = started.elapsed();
    println!(
        "kernel fuzz: XDP passed {} relayed {}, tc passed {} relayed {} \
         ({not_skbs} frames no skb is built from), in {:.1} s ({:.0} frames/s)",
        outcomes[0][0],
        outcomes[0][1],
        outcomes[1][0],
        outcomes[1][1],
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64()
    );
    // Both programs relayed mutants as well as seeds, and passed others.
    for [passed, relayed] in outcomes {
        assert!(relayed > frames / 16 && passed > frames / 4, "{outcomes:?}");
    }
}
