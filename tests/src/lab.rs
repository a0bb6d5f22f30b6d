//! A ready-made topology: a PBX and one client host per zone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use crate::{veth, Netns};

/// Name of every client's interface towards the PBX.
const CLIENT_IF: &str = "eth0";

/// A PBX namespace plus one client namespace per requested client, each on
/// its own veth link to the PBX.
///
/// Link `i` (0-based, in the order given to [`Lab::new`]) is numbered
/// `10.200.<i+1>.0/24` and `fd00:200:<i+1>::/64` (the third IPv6 group is the
/// number `i+1`, so written in hex from the tenth link on); the PBX end is
/// `.1`/`::1` on the interface the caller names, the client end `.2`/`::2` on
/// `eth0`. Clients route everything (IPv4 and IPv6 default routes) via their
/// link, so a client can also reach the PBX's addresses on other links —
/// traffic that still enters the PBX through the client's own interface,
/// which is what zone-based rules key on.
///
/// Every interface name on the PBX side is chosen by the caller (e.g.
/// `z-local`) because the agent's configuration names zones' interfaces.
///
/// Dropping the lab deletes all its namespaces and whatever runs in them.
#[derive(Debug)]
pub struct Lab {
    pub pbx: Netns,
    pub clients: Vec<Client>,
}

/// One client host of a [`Lab`] and the link that connects it to the PBX.
#[derive(Debug)]
pub struct Client {
    /// The name given to [`Lab::new`].
    pub name: String,
    pub ns: Netns,
    /// The PBX-side interface of this client's link.
    pub pbx_if: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The PBX's addresses on this client's link.
    pub pbx_v4: Ipv4Addr,
    pub pbx_v6: Ipv6Addr,
}

impl Client {
    /// The client's own addresses, IPv4 first.
    pub fn addrs(&self) -> [IpAddr; 2] {
        [self.v4.into(), self.v6.into()]
    }

    /// The PBX's addresses on this client's link, IPv4 first.
    pub fn pbx_addrs(&self) -> [IpAddr; 2] {
        [self.pbx_v4.into(), self.pbx_v6.into()]
    }
}

impl Lab {
    /// Builds the topology: `clients` are `(client name, PBX-side interface
    /// name)` pairs. `tag` (a few ASCII letters or digits) goes into the
    /// namespace names to tell labs apart while debugging.
    pub fn new(tag: &str, clients: &[(&str, &str)]) -> Result<Lab> {
        if clients.len() > 254 {
            bail!("a lab has at most 254 clients (one /24 each in 10.200.0.0/16)");
        }
        for (i, (name, _)) in clients.iter().enumerate() {
            if clients[..i].iter().any(|(other, _)| other == name) {
                bail!("client name {name:?} given twice");
            }
        }
        let pbx = Netns::new(&format!("{tag}p"))?;
        let mut lab = Lab {
            pbx,
            clients: Vec::with_capacity(clients.len()),
        };
        // On an error below, dropping `lab` deletes what was made so far.
        for (i, &(name, pbx_if)) in clients.iter().enumerate() {
            let client = lab
                .add_client(i, name, pbx_if, tag)
                .with_context(|| format!("cannot set up lab client {name:?}"))?;
            lab.clients.push(client);
        }
        Ok(lab)
    }

    fn add_client(&self, i: usize, name: &str, pbx_if: &str, tag: &str) -> Result<Client> {
        let net = u8::try_from(i + 1).expect("checked: at most 254 clients");
        let pbx_v4 = Ipv4Addr::new(10, 200, net, 1);
        let v4 = Ipv4Addr::new(10, 200, net, 2);
        let pbx_v6 = Ipv6Addr::new(0xfd00, 0x200, net.into(), 0, 0, 0, 0, 1);
        let v6 = Ipv6Addr::new(0xfd00, 0x200, net.into(), 0, 0, 0, 0, 2);

        let ns = Netns::new(&format!("{tag}c{net}"))?;
        veth(
            &self.pbx,
            pbx_if,
            &[&format!("{pbx_v4}/24"), &format!("{pbx_v6}/64")],
            &ns,
            CLIENT_IF,
            &[&format!("{v4}/24"), &format!("{v6}/64")],
        )?;
        ns.ip(&["-4", "route", "add", "default", "via", &pbx_v4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &pbx_v6.to_string()])?;
        Ok(Client {
            name: name.to_owned(),
            ns,
            pbx_if: pbx_if.to_owned(),
            v4,
            v6,
            pbx_v4,
            pbx_v6,
        })
    }

    /// The client called `name`; panics (naming the clients there are) if
    /// there is none, as that is a bug in the test.
    pub fn client(&self, name: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.clients.iter().map(|c| c.name.as_str()).collect();
                panic!("lab has no client {name:?}; it has {names:?}")
            })
    }

    /// Names of all namespaces of this lab, PBX first.
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(&self.pbx)
            .chain(self.clients.iter().map(|c| &c.ns))
            .map(|ns| ns.name().to_owned())
            .collect()
    }
}
