"""Helpers of deploy/lab.sh, run inside the lab's network namespaces.

  lab.py serve TCP_PORTS UDP_PORTS   answer every TCP connection with one line
                                     and echo UDP, on the comma-separated ports
  lab.py probe ADDR PORT/PROTO [S]   connect (TCP) or send one datagram (UDP);
                                     exit 0 when it answers within S seconds
  lab.py options ADDR [S]            one SIP OPTIONS over UDP to ADDR:5060;
                                     exit 0 when a SIP answer comes back

Standard library only.
"""

import selectors
import socket
import sys


def peer_of(addr):
    a = addr[0]
    return a[7:] if a.startswith("::ffff:") else a


def bind(kind, port):
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        where = ("::", port)
    except OSError:
        s = socket.socket(socket.AF_INET, kind)
        where = ("0.0.0.0", port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(where)
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    s.setblocking(False)
    return s


def ports(spec):
    return [int(p) for p in spec.split(",") if p]


def serve(tcp, udp):
    sel = selectors.DefaultSelector()
    for p in tcp:
        sel.register(bind(socket.SOCK_STREAM, p), selectors.EVENT_READ, ("tcp", p))
    for p in udp:
        sel.register(bind(socket.SOCK_DGRAM, p), selectors.EVENT_READ, ("udp", p))
    while True:
        for key, _ in sel.select():
            proto, port = key.data
            s = key.fileobj
            try:
                if proto == "tcp":
                    c, peer = s.accept()
                    c.settimeout(1)
                    c.sendall(f"palisade-lab {port}/tcp: hello {peer_of(peer)}\n".encode())
                    c.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(f"palisade-lab {port}/udp: echo ".encode() + data[:200], peer)
            except OSError:
                pass


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def probe(addr, spec, timeout):
    port, proto = spec.split("/")
    port = int(port)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family_of(addr), kind)
    s.settimeout(timeout)
    what = f"{addr} {port}/{proto}"
    try:
        if proto == "tcp":
            s.connect((addr, port))
            reply = s.recv(200)
        else:
            s.sendto(b"probe", (addr, port))
            reply, _ = s.recvfrom(2048)
    except socket.timeout:
        print(f"{what}: no answer within {timeout:g}s (dropped)")
        return 1
    except ConnectionRefusedError:
        print(f"{what}: refused (reachable, nothing listening)")
        return 2
    except OSError as e:
        print(f"{what}: {e.strerror or e}")
        return 3
    print(f"{what}: open -> {reply.decode(errors='replace').strip()}")
    return 0


def options(addr, timeout):
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    host = f"[{addr}]" if ":" in addr else addr
    what = f"{addr} 5060/udp SIP OPTIONS"
    try:
        s.connect((addr, 5060))
        local = s.getsockname()
        me = f"[{local[0]}]" if ":" in local[0] else local[0]
        msg = (
            f"OPTIONS sip:ping@{host} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me}:{local[1]};branch=z9hG4bK-lab{local[1]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ping@{host}>;tag=lab{local[1]}\r\n"
            f"To: <sip:ping@{host}>\r\n"
            f"Call-ID: lab-{local[1]}@palisade-lab\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "User-Agent: palisade-lab\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.send(msg.encode())
        reply = s.recv(4096)
    except socket.timeout:
        print(f"{what}: no answer within {timeout:g}s (dropped)")
        return 1
    except OSError as e:
        print(f"{what}: {e.strerror or e}")
        return 3
    first = reply.decode(errors="replace").split("\r\n", 1)[0]
    if not first.startswith("SIP/2.0 "):
        print(f"{what}: answered, but not SIP: {first[:60]}")
        return 4
    server = next(
        (l.split(":", 1)[1].strip() for l in reply.decode(errors="replace").split("\r\n")
         if l.lower().startswith("server:")),
        "",
    )
    print(f"{what}: {first}" + (f" ({server})" if server else ""))
    return 0


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "serve" and len(argv) == 4:
        serve(ports(argv[2]), ports(argv[3]))
    elif cmd == "probe" and len(argv) in (4, 5):
        return probe(argv[2], argv[3], float(argv[4]) if len(argv) > 4 else 2.0)
    elif cmd == "options" and len(argv) in (3, 4):
        return options(argv[2], float(argv[3]) if len(argv) > 3 else 2.0)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
