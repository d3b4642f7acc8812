//! Stand-ins for someone else's programs on the relay's interfaces, as
//! Cilium has them on a node: an XDP program and tc ingress programs that
//! count the datagrams to one port and pass every frame on
//! (`turnx_test_foreign_*` in the benchmark's object, `bench/ebpf`). Each
//! stand-in is its own load of the object, with its own counter; it stays
//! attached until dropped.

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::TcAttachOptions},
};

use crate::Netns;

/// One stand-in, attached.
pub struct Foreign {
    ebpf: Ebpf,
    /// Where it runs, for messages.
    pub place: String,
}

impl Foreign {
    /// Loads the stand-in counting datagrams to `port`.
    fn load(object: &[u8], port: u16) -> Ebpf {
        EbpfLoader::new()
            .override_global("FOREIGN_PORT", &port, true)
            .load(object)
            .expect("loading the foreign stand-ins")
    }

    /// Attaches the XDP stand-in to `dev` in `ns`, in native mode.
    pub fn xdp(object: &[u8], ns: &Netns, dev: &str, port: u16) -> Foreign {
        let mut ebpf = Foreign::load(object, port);
        let program: &mut Xdp = ebpf
            .program_mut("turnx_test_foreign_xdp")
            .expect("the XDP stand-in")
            .try_into()
            .expect("an XDP program");
        program.load().expect("loading the XDP stand-in");
        ns.run(|| program.attach(dev, XdpMode::Driver))
            .expect("attaching the XDP stand-in");
        Foreign {
            ebpf,
            place: format!("XDP on {dev}"),
        }
    }

    /// Attaches the tc stand-in to `dev`'s ingress in `ns`, after the
    /// programs already there (tcx).
    pub fn tc(object: &[u8], ns: &Netns, dev: &str, port: u16) -> Foreign {
        let mut ebpf = Foreign::load(object, port);
        let program: &mut SchedClassifier = ebpf
            .program_mut("turnx_test_foreign_tc")
            .expect("the tc stand-in")
            .try_into()
            .expect("a tc program");
        program.load().expect("loading the tc stand-in");
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        ns.run(|| program.attach_with_options(dev, TcAttachType::Ingress, options))
            .expect("attaching the tc stand-in");
        Foreign {
            ebpf,
            place: format!("tc on {dev}"),
        }
    }

    /// The datagrams to its port it has seen, summed over CPUs.
    pub fn seen(&self) -> u64 {
        let map = self.ebpf.map("FOREIGN_SEEN").expect("the FOREIGN_SEEN map");
        let seen: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("a per-CPU array");
        seen.get(&0, 0).expect("reading FOREIGN_SEEN").iter().sum()
    }
}
