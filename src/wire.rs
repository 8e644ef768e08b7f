//! DNS wire format on the hot path: a strict, allocation-free query parser and the response
//! encoder.
//!
//! Why not hickory's `MessageRequest`: it allocates per query (a `Vec` of queries, a boxed copy
//! of the question, an `Edns` with an options vector) and accepts EDNS Client Subnet options
//! that RFC 7871 §7.1.1 says must be rejected (non-zero scope, address bits past the prefix,
//! trailing address bytes). We parse exactly what an authoritative server needs — header, one
//! question, the OPT record — and keep the question's raw bytes so the name's case is echoed
//! byte for byte (0x20 encoding). Records are still encoded by hickory (`BinEncoder`, name
//! compression, every RDATA type).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::rr::{RData, Record};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};

/// Header length, RFC 1035 §4.1.1.
pub const HEADER_LEN: usize = 12;
/// EDNS option code of Client Subnet, RFC 7871 §6.
pub const OPT_ECS: u16 = 8;
/// RR type of OPT, RFC 6891.
const TYPE_OPT: u16 = 41;

/// Opcodes, RFC 1035 §4.1.1, RFC 1996, RFC 2136.
pub mod opcode {
    /// Standard query.
    pub const QUERY: u8 = 0;
    /// Zone change notification.
    pub const NOTIFY: u8 = 4;
    /// Dynamic update.
    pub const UPDATE: u8 = 5;
}

/// Response codes (12-bit with EDNS), RFC 1035, RFC 6891.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;
    /// Bad EDNS version (extended rcode 16).
    pub const BADVERS: u16 = 16;
}

/// A query name: the lower-cased wire form plus label offsets, on the stack.
///
/// Every suffix at a label boundary is itself a wire-format name, which is how zones and
/// their ancestors are found without building new names.
#[derive(Clone)]
pub struct QName {
    buf: [u8; 255],
    len: u8,
    offsets: [u8; 128],
    labels: u8,
}

impl std::fmt::Debug for QName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QName({})", self.to_dotted())
    }
}

impl QName {
    /// Lower-cased wire bytes (ends with the root label).
    pub fn lower(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Number of labels, not counting the root.
    pub fn label_count(&self) -> usize {
        usize::from(self.labels)
    }

    /// The name with its first `skip` labels removed (`skip == label_count()` is the root).
    pub fn suffix(&self, skip: usize) -> &[u8] {
        let start = if skip >= self.label_count() {
            usize::from(self.len) - 1
        } else {
            usize::from(self.offsets[skip])
        };
        &self.buf[start..usize::from(self.len)]
    }

    /// Presentation form (`www.example.test.`), for logs and explain output.
    pub fn to_dotted(&self) -> String {
        let mut s = String::new();
        let b = self.lower();
        let mut i = 0;
        while i < b.len() && b[i] != 0 {
            let l = usize::from(b[i]);
            for &c in &b[i + 1..i + 1 + l] {
                if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                    s.push(char::from(c));
                } else {
                    s.push_str(&format!("\\{c:03}"));
                }
            }
            s.push('.');
            i += 1 + l;
        }
        if s.is_empty() {
            s.push('.');
        }
        s
    }

    /// Parses a name from presentation form (for tools and tests, not the hot path).
    pub fn from_dotted(name: &str) -> Option<Self> {
        let mut wire = Vec::new();
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            if label.len() > 63 {
                return None;
            }
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        parse_qname(&wire, 0).ok().map(|(q, _)| q)
    }
}

/// Why a packet was not parsed into a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer: shorter than a header, or a response (QR=1), which must never be
    /// answered (reflection loops).
    Drop,
    /// Malformed: answer FORMERR with this much of the request echoed.
    FormErr {
        /// Request header (ID, opcode, RD copied into the reply).
        id: u16,
        /// Request opcode.
        opcode: u8,
        /// Request RD flag.
        rd: bool,
        /// Whether the request carried a well-formed OPT (then the FORMERR carries one too).
        edns: bool,
        /// DO bit of that OPT (copied into the FORMERR's OPT, RFC 3225 §3).
        dnssec_ok: bool,
    },
}

/// The one question of a query.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    /// Name, type and class exactly as received (the name's case preserved).
    pub raw: &'a [u8],
    /// Lower-cased name.
    pub name: QName,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
}

/// EDNS Client Subnet as received and validated (RFC 7871 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    /// 1 = IPv4, 2 = IPv6.
    pub family: u16,
    /// SOURCE PREFIX-LENGTH.
    pub source_prefix: u8,
    /// The address, bits past the prefix zero.
    pub addr: IpAddr,
}

impl ClientSubnet {
    /// Bytes of address carried on the wire for this prefix.
    fn addr_len(&self) -> usize {
        usize::from(self.source_prefix).div_ceil(8)
    }

    /// The address as carried on the wire: its first [`Self::addr_len`] bytes (the rest of
    /// the array is zero).
    pub fn addr_bytes(&self) -> ([u8; 16], usize) {
        let n = self.addr_len();
        let mut b = [0u8; 16];
        match self.addr {
            IpAddr::V4(a) => b[..n].copy_from_slice(&a.octets()[..n]),
            IpAddr::V6(a) => b[..n].copy_from_slice(&a.octets()[..n]),
        }
        (b, n)
    }
}

/// The OPT record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size (values below 512 are treated as 512, RFC 6891 §6.2.3).
    pub payload: u16,
    /// EDNS version.
    pub version: u8,
    /// DO bit. We sign nothing, but RFC 3225 §3 requires it to be copied into the response.
    pub dnssec_ok: bool,
    /// Client Subnet option, if present and valid.
    pub ecs: Option<ClientSubnet>,
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// Message ID.
    pub id: u16,
    /// Opcode.
    pub opcode: u8,
    /// Recursion desired (copied to the reply, RFC 1035 §4.1.1).
    pub rd: bool,
    /// Checking disabled (copied to the reply, RFC 4035 §3.1.6).
    pub cd: bool,
    /// The question; `None` only when QDCOUNT is 0, which is legal for some opcodes.
    pub question: Option<Question<'a>>,
    /// The OPT record, if any.
    pub edns: Option<Edns>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Parses a question name at `pos` (no compression: nothing precedes it to point at).
///
/// Always inlined, like [`parse`]: `QName` is ~400 bytes, and returned through two `Result`s
/// and a `Query` it was copied six times per query (a tenth of a static answer's instructions);
/// inlined into the handler, the compiler builds it in place.
#[inline(always)]
fn parse_qname(b: &[u8], mut pos: usize) -> Result<(QName, usize), ()> {
    let mut q = QName {
        buf: [0; 255],
        len: 0,
        offsets: [0; 128],
        labels: 0,
    };
    let mut out = 0usize;
    loop {
        let l = usize::from(*b.get(pos).ok_or(())?);
        if l == 0 {
            if out >= 255 {
                return Err(());
            }
            q.buf[out] = 0;
            q.len = (out + 1) as u8;
            return Ok((q, pos + 1));
        }
        if l > 63 || out + 1 + l + 1 > 255 {
            return Err(()); // compression pointer, extended label, or name longer than 255
        }
        let label = b.get(pos + 1..pos + 1 + l).ok_or(())?;
        q.offsets[usize::from(q.labels)] = out as u8;
        q.labels += 1;
        q.buf[out] = l as u8;
        for (d, s) in q.buf[out + 1..out + 1 + l].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        out += 1 + l;
        pos += 1 + l;
    }
}

/// Skips a possibly compressed name in a record.
fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let l = *b.get(pos)?;
        match l & 0xC0 {
            0x00 if l == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(l),
            0xC0 => {
                b.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Parses and validates a query. Never panics on any input.
#[inline(always)]
pub fn parse(b: &[u8]) -> Result<Query<'_>, ParseError> {
    if b.len() < HEADER_LEN {
        return Err(ParseError::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    if b[2] & 0x80 != 0 {
        return Err(ParseError::Drop);
    }
    let opcode = (b[2] >> 3) & 0x0F;
    let rd = b[2] & 0x01 != 0;
    let cd = b[3] & 0x10 != 0;
    let qd = u16_at(b, 4).unwrap_or(0);
    let an = u16_at(b, 6).unwrap_or(0);
    let ns = u16_at(b, 8).unwrap_or(0);
    let ar = u16_at(b, 10).unwrap_or(0);
    let mut formerr = ParseError::FormErr {
        id,
        opcode,
        rd,
        edns: false,
        dnssec_ok: false,
    };
    if qd > 1 {
        return Err(formerr);
    }
    let mut pos = HEADER_LEN;
    let question = if qd == 1 {
        let (name, after) = parse_qname(b, pos).map_err(|()| formerr.clone())?;
        let qtype = u16_at(b, after).ok_or_else(|| formerr.clone())?;
        let qclass = u16_at(b, after + 2).ok_or_else(|| formerr.clone())?;
        let raw = &b[pos..after + 4];
        pos = after + 4;
        Some(Question {
            raw,
            name,
            qtype,
            qclass,
        })
    } else {
        None
    };
    // Answer and authority records are meaningless in a query but legal; skip them.
    for _ in 0..(u32::from(an) + u32::from(ns)) {
        pos = skip_record(b, pos).ok_or_else(|| formerr.clone())?;
    }
    let mut edns = None;
    for _ in 0..ar {
        let start = pos;
        let after_name = skip_name(b, pos).ok_or_else(|| formerr.clone())?;
        let rtype = u16_at(b, after_name).ok_or_else(|| formerr.clone())?;
        pos = skip_record(b, pos).ok_or_else(|| formerr.clone())?;
        if rtype != TYPE_OPT {
            continue;
        }
        // RFC 6891 §6.1.1: exactly one OPT, owned by the root.
        if edns.is_some() || b[start] != 0 {
            return Err(formerr);
        }
        let opt = parse_opt(b, after_name).ok_or_else(|| formerr.clone())?;
        if let ParseError::FormErr {
            edns: e, dnssec_ok, ..
        } = &mut formerr
        {
            *e = true;
            *dnssec_ok = opt.dnssec_ok;
        }
        edns = Some(opt);
    }
    if pos != b.len() {
        return Err(formerr); // trailing garbage
    }
    Ok(Query {
        id,
        opcode,
        rd,
        cd,
        question,
        edns,
    })
}

/// Skips one resource record starting at its owner name.
fn skip_record(b: &[u8], pos: usize) -> Option<usize> {
    let p = skip_name(b, pos)?;
    let rdlen = usize::from(u16_at(b, p + 8)?);
    let end = p + 10 + rdlen;
    (end <= b.len()).then_some(end)
}

/// Parses OPT fields after the owner name; `None` = malformed (FORMERR).
fn parse_opt(b: &[u8], p: usize) -> Option<Edns> {
    let payload = u16_at(b, p + 2)?.max(512);
    let version = *b.get(p + 5)?;
    let flags = u16_at(b, p + 6)?;
    let rdlen = usize::from(u16_at(b, p + 8)?);
    let rdata = b.get(p + 10..p + 10 + rdlen)?;
    let mut ecs = None;
    let mut i = 0;
    while i < rdata.len() {
        let code = u16_at(rdata, i)?;
        let len = usize::from(u16_at(rdata, i + 2)?);
        let data = rdata.get(i + 4..i + 4 + len)?;
        if code == OPT_ECS {
            if ecs.is_some() {
                return None; // two ECS options: ambiguous
            }
            ecs = Some(parse_ecs(data)?);
        }
        i += 4 + len;
    }
    Some(Edns {
        payload,
        version,
        dnssec_ok: flags & 0x8000 != 0,
        ecs,
    })
}

/// Validates an ECS option per RFC 7871 §6 and §7.1.1; `None` = FORMERR.
pub fn parse_ecs(data: &[u8]) -> Option<ClientSubnet> {
    let family = u16_at(data, 0)?;
    let source_prefix = *data.get(2)?;
    let scope_prefix = *data.get(3)?;
    let addr_bytes = data.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    // "SCOPE PREFIX-LENGTH ... MUST be set to 0 in queries."
    if source_prefix > max || scope_prefix != 0 {
        return None;
    }
    // "ADDRESS ... MUST be truncated to the number of bits indicated by SOURCE PREFIX-LENGTH"
    let need = usize::from(source_prefix).div_ceil(8);
    if addr_bytes.len() != need {
        return None;
    }
    let mut full = [0u8; 16];
    full[..need].copy_from_slice(addr_bytes);
    if !source_prefix.is_multiple_of(8) {
        let mask = 0xFFu8 >> (source_prefix % 8);
        if full[need - 1] & mask != 0 {
            return None; // bits set beyond the prefix
        }
    }
    let addr = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(full[0], full[1], full[2], full[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(full))
    };
    Some(ClientSubnet {
        family,
        source_prefix,
        addr,
    })
}

/// Header fields of a response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHeader {
    /// Copied from the query.
    pub id: u16,
    /// Copied from the query.
    pub opcode: u8,
    /// Copied from a standard query (see [`ResponseHeader::reply_to`]).
    pub rd: bool,
    /// Copied from a standard query (see [`ResponseHeader::reply_to`]).
    pub cd: bool,
    /// Authoritative answer.
    pub aa: bool,
    /// Truncated.
    pub tc: bool,
    /// 12-bit response code; the upper 8 bits travel in OPT.
    pub rcode: u16,
}

impl ResponseHeader {
    /// The header of a reply to a query with this ID, opcode and RD/CD bits, before the rcode
    /// and AA are decided.
    ///
    /// RD (RFC 1035 §4.1.1), CD (RFC 4035 §3.1.6), and AD, RA and AA are defined for standard
    /// queries only; a reply to another opcode (NOTIFY, UPDATE, STATUS, unassigned ones) echoes
    /// the ID and the opcode and carries none of them — a NOTIMP to opcode 15 with RD set would
    /// claim meaning for a bit that opcode does not have. (We never set AD or RA, and set AA
    /// only on QUERY answers from a zone.)
    pub fn reply_to(id: u16, op: u8, rd: bool, cd: bool) -> Self {
        let query = op == opcode::QUERY;
        Self {
            id,
            opcode: op,
            rd: rd && query,
            cd: cd && query,
            ..Default::default()
        }
    }
}

/// One record to emit, with the TTL to use.
#[derive(Debug, Clone, Copy)]
pub struct Rr<'a> {
    /// The record (its owner name is used unless `at_qname`).
    pub record: &'a Record,
    /// Owner is the query name: emitted as a pointer to the question (0xC00C), which both
    /// compresses and keeps the client's spelling.
    pub at_qname: bool,
    /// TTL on the wire.
    pub ttl: u32,
    /// The same record pre-encoded relative to the zone apex (see [`ApexRr`]); used when the
    /// question is present, `record` otherwise.
    pub apex: Option<&'a ApexRr>,
    /// Owner name to emit instead of the record's own (unless `at_qname`): a record
    /// synthesized from a wildcard for a CNAME target is owned by that target, not by `*.x`.
    pub owner: Option<&'a hickory_server::proto::rr::Name>,
}

/// A record owned by a zone apex, encoded once at load time with its names compressed against
/// the apex *as it appears at the end of the question name*, so per query only the pointer
/// values are filled in. Used for the SOA of every negative answer: through hickory's encoder
/// that SOA (owner plus two names in the RDATA) cost half of an NXDOMAIN's instructions,
/// mostly allocations in its compression table.
#[derive(Debug, Clone)]
pub struct ApexRr {
    /// The RR with zeroed 2-byte pointer slots (RDLENGTH already set).
    bytes: Box<[u8]>,
    /// Where the pointer slots are.
    slots: smallvec::SmallVec<[u16; 4]>,
    /// Wire length of the apex name (lower-cased: the question's suffix is compared to it).
    apex: Box<[u8]>,
}

impl ApexRr {
    /// Pre-encodes an SOA record owned by `apex` (wire form, lower case). `None` for other
    /// record types or if the record's owner is not the apex (then hickory encodes it).
    pub fn soa(record: &Record, apex: &[u8]) -> Option<Self> {
        use hickory_server::proto::rr::RData;
        let RData::SOA(soa) = &record.data else {
            return None;
        };
        if *wire_lower(&record.name) != *apex {
            return None;
        }
        let mut b = Vec::with_capacity(64);
        let mut slots = smallvec::SmallVec::new();
        // Owner: the apex.
        slots.push(b.len() as u16);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        b.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
        b.extend_from_slice(&record.ttl.to_be_bytes());
        let rdlen_at = b.len();
        b.extend_from_slice(&[0, 0]);
        let rdata_start = b.len();
        for name in [&soa.mname, &soa.rname] {
            // Labels above the apex as written, then a pointer to the apex; a name outside the
            // zone is written in full.
            let lower = wire_lower(name);
            let inside = lower.len() >= apex.len()
                && lower.ends_with(apex)
                && wire_is_subdomain(&lower, apex);
            let own_labels =
                name.num_labels() as usize - if inside { apex_labels(apex) } else { 0 };
            for label in name.iter().take(own_labels) {
                b.push(label.len() as u8);
                b.extend_from_slice(label);
            }
            if inside {
                slots.push(b.len() as u16);
                b.extend_from_slice(&[0, 0]);
            } else {
                b.push(0);
            }
        }
        for v in [
            soa.serial,
            soa.refresh as u32,
            soa.retry as u32,
            soa.expire as u32,
            soa.minimum,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let rdlen = u16::try_from(b.len() - rdata_start).ok()?;
        b[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        Some(Self {
            bytes: b.into_boxed_slice(),
            slots,
            apex: apex.into(),
        })
    }

    /// Emits the record for a response whose question name (wire, as received) is `qname`;
    /// `false` if it cannot be done (the question does not end in the apex), then the caller
    /// encodes the record the ordinary way.
    fn emit(
        &self,
        enc: &mut BinEncoder<'_>,
        qname: &[u8],
    ) -> Result<bool, hickory_server::proto::ProtoError> {
        let Some(off) = qname.len().checked_sub(self.apex.len()) else {
            return Ok(false);
        };
        if !qname[off..].eq_ignore_ascii_case(&self.apex) || !label_boundary(qname, off) {
            return Ok(false);
        }
        let ptr = (0xC000 | (HEADER_LEN + off) as u16).to_be_bytes();
        // Patched in a stack copy and emitted as one slice: each emit through hickory's
        // encoder costs a bounds check and a call, seven of them were a sixth of an NXDOMAIN.
        let mut buf = [0u8; 512];
        if let Some(copy) = buf.get_mut(..self.bytes.len()) {
            copy.copy_from_slice(&self.bytes);
            for &slot in &self.slots {
                let slot = usize::from(slot);
                copy[slot..slot + 2].copy_from_slice(&ptr);
            }
            enc.emit_vec(copy)?;
            return Ok(true);
        }
        let mut from = 0;
        for &slot in &self.slots {
            let slot = usize::from(slot);
            enc.emit_vec(&self.bytes[from..slot])?;
            enc.emit_vec(&ptr)?;
            from = slot + 2;
        }
        enc.emit_vec(&self.bytes[from..])?;
        Ok(true)
    }
}

/// Whether wire name `name` equals or is below wire name `apex` (both lower-cased).
pub fn wire_is_subdomain(name: &[u8], apex: &[u8]) -> bool {
    if name.len() < apex.len() || !name.ends_with(apex) {
        return false;
    }
    // The match must start at a label boundary.
    let start = name.len() - apex.len();
    let mut off = 0;
    while off < start {
        off += 1 + name[off] as usize;
    }
    off == start
}

/// Lower-cased wire form of a name (the key format of `zone::Zone::nodes`).
pub fn wire_lower(name: &hickory_server::proto::rr::Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into_boxed_slice()
}

/// Labels of a wire name (the root's empty label not counted).
fn apex_labels(wire: &[u8]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < wire.len() && wire[i] != 0 {
        n += 1;
        i += 1 + usize::from(wire[i]);
    }
    n
}

/// Whether `off` is the start of a label in the (uncompressed) wire name.
fn label_boundary(name: &[u8], off: usize) -> bool {
    let mut i = 0;
    while i < off {
        i += 1 + usize::from(name[i]);
    }
    i == off
}

impl<'a> Rr<'a> {
    /// A record with its own owner and TTL.
    pub fn own(record: &'a Record) -> Self {
        Self {
            record,
            at_qname: false,
            ttl: record.ttl,
            apex: None,
            owner: None,
        }
    }

    /// A record answered at `owner` instead of its own name (wildcard synthesis, RFC 4592).
    pub fn at_owner(record: &'a Record, owner: &'a hickory_server::proto::rr::Name) -> Self {
        Self {
            owner: Some(owner),
            ..Self::own(record)
        }
    }

    /// A record owned by the zone apex, with its pre-encoded form if there is one.
    pub fn at_apex(record: &'a Record, pre: Option<&'a ApexRr>) -> Self {
        Self {
            apex: pre,
            ..Self::own(record)
        }
    }

    /// A record owned by the query name.
    pub fn at_qname(record: &'a Record) -> Self {
        Self {
            record,
            at_qname: true,
            ttl: record.ttl,
            apex: None,
            owner: None,
        }
    }
}

/// The OPT record of a response.
#[derive(Debug, Clone, Copy)]
pub struct OptOut {
    /// Payload size we advertise.
    pub payload: u16,
    /// ECS echoed back, with the scope prefix we answer for.
    pub ecs: Option<(ClientSubnet, u8)>,
    /// The query's DO bit, copied (RFC 3225 §3: "The DO bit of the query MUST be copied in the
    /// response"). We sign nothing, so a set DO adds no records; it only tells the client its
    /// OPT was understood.
    pub dnssec_ok: bool,
}

/// Sections of a response.
#[derive(Debug, Default)]
///
/// Inline vectors: nearly every answer has at most a few records per section, and a heap
/// allocation per section was ~10 % of a static answer's instructions.
pub struct Sections<'a> {
    /// Answer section.
    pub answer: SectionVec<'a>,
    /// Authority section.
    pub authority: SectionVec<'a>,
    /// Additional section (OPT is added separately).
    pub additional: SectionVec<'a>,
}

/// Records of one section; four fit without allocating.
pub type SectionVec<'a> = smallvec::SmallVec<[Rr<'a>; 4]>;

/// The encoded message did not fit the size limit.
#[derive(Debug)]
pub struct Overflow;

/// Encodes a response into `out` (cleared first), failing if it exceeds `limit` bytes.
pub fn encode(
    out: &mut Vec<u8>,
    header: &ResponseHeader,
    question: Option<&[u8]>,
    sections: &Sections<'_>,
    opt: Option<&OptOut>,
    limit: u16,
) -> Result<(), Overflow> {
    out.clear();
    let mut enc = BinEncoder::new(out);
    enc.set_max_size(limit);
    encode_into(&mut enc, header, question, sections, opt).map_err(|_| Overflow)?;
    let counts = [
        u16::from(question.is_some()),
        sections.answer.len() as u16,
        sections.authority.len() as u16,
        sections.additional.len() as u16 + u16::from(opt.is_some()),
    ];
    for (i, c) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

fn encode_into(
    enc: &mut BinEncoder<'_>,
    h: &ResponseHeader,
    question: Option<&[u8]>,
    sections: &Sections<'_>,
    opt: Option<&OptOut>,
) -> Result<(), hickory_server::proto::ProtoError> {
    // Fixed-size parts go out as one slice each: hickory's encoder costs a bounds check and a
    // `memcpy` call per emit, which was a third of a static answer's instructions when the
    // header, each RR's fixed fields and the OPT record were emitted field by field.
    let b2 =
        0x80 | (h.opcode << 3) | (u8::from(h.aa) << 2) | (u8::from(h.tc) << 1) | u8::from(h.rd);
    let b3 = (u8::from(h.cd) << 4) | (h.rcode & 0x0F) as u8;
    let [id0, id1] = h.id.to_be_bytes();
    // Counts are patched by `encode`.
    enc.emit_vec(&[id0, id1, b2, b3, 0, 0, 0, 0, 0, 0, 0, 0])?;
    if let Some(q) = question {
        enc.emit_vec(q)?;
    }
    // The question's name: the question minus QTYPE and QCLASS.
    let qname = question.and_then(|q| q.get(..q.len().checked_sub(4)?));
    for rr in sections
        .answer
        .iter()
        .chain(&sections.authority)
        .chain(&sections.additional)
    {
        match (rr.apex, qname) {
            (Some(pre), Some(qname)) if pre.emit(enc, qname)? => {}
            _ => emit_rr(enc, rr)?,
        }
    }
    if let Some(o) = opt {
        // Root owner, type OPT, payload, extended rcode, version 0, flags (DO copied from the
        // query), then RDLENGTH and the ECS option if any.
        let mut b = [0u8; 11 + 4 + 4 + 16];
        b[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
        b[3..5].copy_from_slice(&o.payload.to_be_bytes());
        b[5] = ((h.rcode >> 4) & 0xFF) as u8;
        b[7] = u8::from(o.dnssec_ok) << 7;
        let len = match &o.ecs {
            Some((ecs, scope)) => {
                let (addr, alen) = ecs.addr_bytes();
                b[9..11].copy_from_slice(&((8 + alen) as u16).to_be_bytes());
                b[11..13].copy_from_slice(&OPT_ECS.to_be_bytes());
                b[13..15].copy_from_slice(&((4 + alen) as u16).to_be_bytes());
                b[15..17].copy_from_slice(&ecs.family.to_be_bytes());
                b[17] = ecs.source_prefix;
                b[18] = *scope;
                b[19..19 + alen].copy_from_slice(&addr[..alen]);
                19 + alen
            }
            None => 11,
        };
        enc.emit_vec(&b[..len])?;
    }
    Ok(())
}

fn emit_rr(enc: &mut BinEncoder<'_>, rr: &Rr<'_>) -> Result<(), hickory_server::proto::ProtoError> {
    // Owner (a pointer to the question's name, or the name itself, compressed), then type,
    // class, TTL and a placeholder RDLENGTH as one slice; for A and AAAA (every routed answer)
    // the real RDLENGTH and the address too, so the record is a single write.
    let mut fixed = [0u8; 12 + 16];
    let head = if rr.at_qname {
        fixed[..2].copy_from_slice(&(0xC000 | HEADER_LEN as u16).to_be_bytes());
        2
    } else {
        rr.owner.unwrap_or(&rr.record.name).emit(enc)?;
        0
    };
    fixed[head..head + 2].copy_from_slice(&u16::from(rr.record.record_type()).to_be_bytes());
    fixed[head + 2..head + 4].copy_from_slice(&u16::from(rr.record.dns_class).to_be_bytes());
    fixed[head + 4..head + 8].copy_from_slice(&rr.ttl.to_be_bytes());
    let n = match &rr.record.data {
        RData::A(a) => {
            fixed[head + 10..head + 14].copy_from_slice(&a.0.octets());
            4
        }
        RData::AAAA(a) => {
            fixed[head + 10..head + 26].copy_from_slice(&a.0.octets());
            16
        }
        _ => 0,
    };
    if n > 0 {
        fixed[head + 8..head + 10].copy_from_slice(&(n as u16).to_be_bytes());
        return enc.emit_vec(&fixed[..head + 10 + n]);
    }
    enc.emit_vec(&fixed[..head + 10])?;
    let len_at = enc.offset() - 2;
    let start = enc.offset();
    rr.record.data.emit(enc)?;
    let len = (enc.offset() - start) as u16;
    let end = enc.offset();
    enc.set_offset(len_at);
    enc.emit_u16(len)?;
    enc.set_offset(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        b.extend_from_slice(name);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        if let Some(o) = opt {
            b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&(o.len() as u16).to_be_bytes());
            b.extend_from_slice(o);
        }
        b
    }

    const WWW: &[u8] = b"\x03WwW\x07example\x04test\x00";

    /// The pre-encoded apex SOA decodes to exactly the record hickory's encoder writes, for
    /// questions at and below the apex in any case, with mname/rname inside and outside the zone
    /// — and falls back to hickory when the question does not end in the apex.
    #[test]
    fn pre_encoded_apex_soa_matches_hickory() {
        use hickory_server::proto::op::Message;
        use hickory_server::proto::rr::rdata::SOA;
        use hickory_server::proto::rr::{Name, RData};
        let apex = Name::from_ascii("Example.TEST.").unwrap();
        let apex_wire = wire_lower(&apex);
        let soas = [
            ("ns1.example.test.", "hostmaster.example.test."),
            ("example.test.", "a.b.c.example.test."),
            ("ns.other.net.", "dns.other.net."),
            ("ns1.example.test.", "."),
        ];
        let qnames: [&[u8]; 4] = [
            b"\x07ExAmPlE\x04TeSt\x00",
            b"\x04nope\x07example\x04test\x00",
            b"\x01x\x01Y\x04deep\x07EXAMPLE\x04test\x00",
            // Not below the apex ("xexample" is not a label boundary match): hickory fallback.
            b"\x08xexample\x04test\x00",
        ];
        for (m, r) in soas {
            let soa = SOA::new(
                Name::from_ascii(m).unwrap(),
                Name::from_ascii(r).unwrap(),
                2026112401,
                7200,
                900,
                1209600,
                300,
            );
            let record = Record::from_rdata(apex.clone(), 300, RData::SOA(soa));
            let pre = ApexRr::soa(&record, &apex_wire).expect("an apex SOA");
            for qname in qnames {
                let mut question = qname.to_vec();
                question.extend_from_slice(&[0, 1, 0, 1]);
                let h = ResponseHeader {
                    id: 7,
                    rcode: rcode::NXDOMAIN,
                    aa: true,
                    ..Default::default()
                };
                let encode = |pre: Option<&ApexRr>| {
                    let mut s = Sections::default();
                    s.authority.push(Rr::at_apex(&record, pre));
                    let mut out = Vec::new();
                    encode(&mut out, &h, Some(&question), &s, None, 512).unwrap();
                    out
                };
                let (ours, theirs) = (encode(Some(&pre)), encode(None));
                let a = Message::from_vec(&ours).expect("pre-encoded response decodes");
                let b = Message::from_vec(&theirs).unwrap();
                assert_eq!(a.authorities, b.authorities, "{m} {r} {qname:?}");
                assert_eq!(a.queries, b.queries);
                // And it is compressed at least as well as hickory's.
                assert!(
                    ours.len() <= theirs.len(),
                    "{m} {r}: {} > {}",
                    ours.len(),
                    theirs.len()
                );
            }
        }
        // Only SOA records at the apex are pre-encoded.
        let a = Record::from_rdata(
            apex.clone(),
            60,
            RData::A(std::net::Ipv4Addr::new(192, 0, 2, 1).into()),
        );
        assert!(ApexRr::soa(&a, &apex_wire).is_none());
    }

    /// A and AAAA records are written in one slice, not by hickory: they must decode to the
    /// same records hickory's own encoder writes, at the question's name (pointer) and
    /// elsewhere, and overflow the limit like any other record.
    #[test]
    fn addresses_written_directly_match_hickory() {
        use hickory_server::proto::op::Message;
        use hickory_server::proto::rr::{DNSClass, Name, RecordType};
        let qname = Name::from_ascii("MqTt.Example.TEST.").unwrap();
        let other = Name::from_ascii("eu.mqtt.example.test.").unwrap();
        let records = [
            Record::from_rdata(
                qname.clone(),
                30,
                RData::A(Ipv4Addr::new(192, 0, 2, 10).into()),
            ),
            Record::from_rdata(
                other.clone(),
                60,
                RData::A(Ipv4Addr::new(198, 51, 100, 7).into()),
            ),
            Record::from_rdata(
                qname.clone(),
                30,
                RData::AAAA("2001:db8::10".parse::<Ipv6Addr>().unwrap().into()),
            ),
            Record::from_rdata(
                other.clone(),
                86_400,
                RData::AAAA("2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().into()),
            ),
        ];
        let mut question = b"\x04MqTt\x07Example\x04TEST\x00".to_vec();
        question.extend_from_slice(&[0, 1, 0, 1]);
        let h = ResponseHeader {
            id: 9,
            aa: true,
            ..Default::default()
        };
        let mut s = Sections::default();
        for (i, r) in records.iter().enumerate() {
            s.answer.push(Rr {
                record: r,
                at_qname: r.name == qname,
                ttl: 17 + i as u32,
                apex: None,
                owner: None,
            });
        }
        let mut out = Vec::new();
        encode(&mut out, &h, Some(&question), &s, None, 512).unwrap();
        let m = Message::from_vec(&out).expect("decodes");
        assert_eq!(m.answers.len(), 4);
        for (i, (got, want)) in m.answers.iter().zip(&records).enumerate() {
            assert_eq!(got.data, want.data);
            assert_eq!(got.ttl, 17 + i as u32);
            assert_eq!(got.dns_class, DNSClass::IN);
            assert!(
                got.name
                    .eq_case(if want.name == qname { &qname } else { &other })
            );
            assert!(matches!(
                got.record_type(),
                RecordType::A | RecordType::AAAA
            ));
        }
        // Too big for the limit: the same overflow as for any other record.
        let limit = out.len() as u16 - 1;
        assert!(encode(&mut out, &h, Some(&question), &s, None, limit).is_err());
    }

    #[test]
    fn parses_question_and_keeps_case() {
        let b = query(WWW, 1, None);
        let q = parse(&b).unwrap();
        let question = q.question.unwrap();
        assert_eq!(&question.raw[..WWW.len()], WWW);
        assert_eq!(question.name.lower(), b"\x03www\x07example\x04test\x00");
        assert_eq!(question.name.label_count(), 3);
        assert_eq!(question.name.suffix(1), b"\x07example\x04test\x00");
        assert_eq!(question.name.suffix(3), b"\x00");
        assert_eq!(question.name.to_dotted(), "www.example.test.");
        assert!(q.edns.is_none());
    }

    #[test]
    fn ecs_validation_table() {
        // (option data, valid?)
        let cases: &[(&[u8], bool)] = &[
            (&[0, 1, 24, 0, 81, 2, 69], true),
            (&[0, 1, 0, 0], true),
            (&[0, 1, 24, 8, 81, 2, 69], false), // non-zero scope
            (&[0, 3, 24, 0, 81, 2, 69], false), // unknown family
            (&[0, 1, 33, 0, 1, 2, 3, 4, 5], false), // prefix too long
            (&[0, 1, 23, 0, 81, 2, 69], false), // bit 24 set beyond /23
            (&[0, 1, 24, 0, 81, 2, 69, 0], false), // trailing address byte
            (&[0, 1, 24, 0, 81, 2], false),     // address too short
            (&[0, 2, 56, 0, 0x2a, 2, 0, 0, 0, 0, 0], true),
        ];
        for (data, ok) in cases {
            assert_eq!(parse_ecs(data).is_some(), *ok, "{data:?}");
        }
    }

    #[test]
    fn responses_and_runts_are_dropped() {
        assert_eq!(parse(&[0; 5]).unwrap_err(), ParseError::Drop);
        let mut b = query(WWW, 1, None);
        b[2] |= 0x80;
        assert_eq!(parse(&b).unwrap_err(), ParseError::Drop);
    }

    #[test]
    fn compression_in_question_is_formerr() {
        let b = query(b"\xC0\x0C", 1, None);
        assert!(matches!(parse(&b), Err(ParseError::FormErr { .. })));
    }

    #[test]
    fn trailing_garbage_is_formerr() {
        let mut b = query(WWW, 1, None);
        b.push(0);
        assert!(matches!(parse(&b), Err(ParseError::FormErr { .. })));
    }

    #[test]
    fn opt_with_unknown_option_is_accepted() {
        let b = query(WWW, 1, Some(&[0xFF, 0x00, 0, 2, 1, 2]));
        let q = parse(&b).unwrap();
        assert_eq!(q.edns.unwrap().payload, 4096);
    }
}
