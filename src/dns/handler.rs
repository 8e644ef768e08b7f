//! The request handler: bytes in, bytes out. Decode → decide → encode.
//!
//! It is synchronous on purpose: nothing on the answer path awaits anything (no probe, no
//! file, no lock). Routing state and zones are read from an `ArcSwap` snapshot with one load
//! per query, so reloads never block or tear a query.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::proto::rr::rdata::HINFO;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use super::routed_cache;
use crate::health::HealthSnapshot;
use crate::metrics::Metrics;
use crate::routing::Family;
use crate::state::State;
use crate::wire::{self, OptOut, ParseError, Query, ResponseHeader, Rr, Sections, opcode, rcode};
use crate::zone::{Lookup, Zone};

/// Transport a query arrived on; decides the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers limited to 512 bytes, or min(client's EDNS size, our size).
    Udp,
    /// TCP: answers up to 65535 bytes.
    Tcp,
}

/// RFC 8482 §4.2: the synthesized HINFO's TTL. A day would be allowed; an hour keeps a
/// changed zone from being masked for long.
const ANY_HINFO_TTL: u32 = 3600;

/// The DNS request handler shared by all transports.
pub struct Handler {
    state: Arc<ArcSwap<State>>,
    health: Arc<ArcSwap<HealthSnapshot>>,
    metrics: Arc<Metrics>,
    rrl: Option<super::rrl::Rrl>,
    edns_payload: u16,
    any_hinfo: Record,
    answer_cache: bool,
}

impl Handler {
    /// A handler answering from `state` and `health`, advertising and capping UDP answers at
    /// `edns_payload`.
    pub fn new(
        state: Arc<ArcSwap<State>>,
        health: Arc<ArcSwap<HealthSnapshot>>,
        metrics: Arc<Metrics>,
        edns_payload: u16,
    ) -> Self {
        let any_hinfo = Record::from_rdata(
            Name::root(),
            ANY_HINFO_TTL,
            RData::HINFO(HINFO::new("RFC8482".to_string(), String::new())),
        );
        Self {
            state,
            health,
            metrics,
            rrl: None,
            edns_payload,
            any_hinfo,
            answer_cache: true,
        }
    }

    /// Turns the per-worker cache of static answers off (tests compare both ways).
    pub fn without_answer_cache(mut self) -> Self {
        self.answer_cache = false;
        self
    }

    /// Enables response rate limiting on UDP.
    pub fn with_rrl(mut self, rrl: super::rrl::Rrl) -> Self {
        self.rrl = rrl.enabled().then_some(rrl);
        self
    }

    /// Answers one message. Returns `false` when nothing must be sent (the packet is dropped).
    ///
    /// `out` is the caller's reusable buffer; on `true` it holds the complete response.
    pub fn handle(
        &self,
        packet: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        let started = std::time::Instant::now();
        let tcp = transport == Transport::Tcp;
        let q = match wire::parse(packet) {
            Ok(q) => q,
            Err(ParseError::Drop) => {
                self.metrics.dropped.inc();
                return false;
            }
            Err(ParseError::FormErr {
                id,
                opcode,
                rd,
                edns,
                dnssec_ok,
            }) => {
                if transport == Transport::Udp
                    && let Some(rrl) = &self.rrl
                {
                    match rrl.check(src.ip(), super::rrl::Kind::Error) {
                        super::rrl::Verdict::Allow => {}
                        // Nothing to truncate: a FORMERR is as small as its query.
                        super::rrl::Verdict::Drop | super::rrl::Verdict::Slip => {
                            self.metrics.rrl_dropped.inc();
                            return false;
                        }
                    }
                }
                let h = ResponseHeader {
                    rcode: rcode::FORMERR,
                    ..ResponseHeader::reply_to(id, opcode, rd, false)
                };
                let opt = edns.then(|| self.opt(dnssec_ok, None));
                let sent =
                    wire::encode(out, &h, None, &Sections::default(), opt.as_ref(), 512).is_ok();
                self.metrics.query(tcp, rcode::FORMERR, elapsed_ns(started));
                return sent;
            }
        };
        let state = self.state.load();
        let key = self.cache_key(&q);
        let raw = q.question.as_ref().map_or(&[][..], |qq| qq.raw);
        // The ECS scope of a routed answer (0: the answer is the same for every subnet).
        let mut ecs_scope = 0u8;
        // The zone the answer came from (not known on a cache hit): RRL counts by it.
        let mut zone_seen = None;
        let sent = match &key {
            Some(k) if super::cache::lookup(state.generation, k, q.id, q.rd, q.cd, raw, out) => {
                self.metrics.answer_cache_hits.inc();
                true
            }
            _ => {
                let mut reusable = None;
                let sent = self.respond(
                    &q,
                    &state,
                    src,
                    transport,
                    out,
                    key.is_some().then_some(&mut reusable),
                    &mut ecs_scope,
                    &mut zone_seen,
                );
                if let (true, Some(k), Some(zone_queries)) = (sent, &key, &reusable) {
                    super::cache::insert(state.generation, k, raw, out, zone_queries);
                }
                sent
            }
        };
        // RRL counts the response by what it is (answer, NXDOMAIN, referral, …), so it runs
        // once the response is known — as in BIND and NSD.
        if sent
            && transport == Transport::Udp
            && let Some(rrl) = &self.rrl
            && let Some(sent) = self.rate_limit(rrl, &q, &state, zone_seen, src, ecs_scope, out)
        {
            return sent;
        }
        if sent && out.len() >= wire::HEADER_LEN {
            let code = if q.edns.is_some_and(|e| e.version > 0) {
                rcode::BADVERS
            } else {
                u16::from(out[3] & 0x0F)
            };
            self.metrics.query(tcp, code, elapsed_ns(started));
            if q.edns.is_some_and(|e| e.ecs.is_some()) {
                self.metrics.ecs_queries.inc();
            }
            if state.query_log_sample > 0.0 && fastrand::f64() < state.query_log_sample {
                log_query(&q, src, transport, code, out);
            }
        }
        sent
    }

    /// The answer-cache key of a query that may be answered from the cache: a standard query
    /// with one question, no EDNS Client Subnet and EDNS version 0 (or no EDNS). The DO bit is
    /// part of the key: it is copied into the answer's OPT.
    fn cache_key(&self, q: &Query<'_>) -> Option<super::cache::Key> {
        if !self.answer_cache || q.opcode != opcode::QUERY {
            return None;
        }
        if q.edns.is_some_and(|e| e.version > 0 || e.ecs.is_some()) {
            return None;
        }
        let question = q.question.as_ref()?;
        super::cache::Key::new(
            question.name.lower(),
            question.qtype,
            question.qclass,
            q.edns.map(|e| e.dnssec_ok),
        )
    }

    /// Our OPT for a reply to a query whose OPT had DO = `dnssec_ok`.
    fn opt(&self, dnssec_ok: bool, ecs: Option<(wire::ClientSubnet, u8)>) -> OptOut {
        OptOut {
            payload: self.edns_payload,
            ecs,
            dnssec_ok,
        }
    }

    /// Applies response rate limiting to the response in `out`: `None` when it may be sent,
    /// else whether anything is to be sent (a slip: `out` now holds the truncated reply).
    #[allow(clippy::too_many_arguments)]
    fn rate_limit(
        &self,
        rrl: &super::rrl::Rrl,
        q: &Query<'_>,
        state: &State,
        zone: Option<&Zone>,
        src: SocketAddr,
        ecs_scope: u8,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        let question = q.question.as_ref()?;
        match rrl.check(src.ip(), rrl_kind(q, state, zone, ecs_scope, out)) {
            super::rrl::Verdict::Allow => None,
            super::rrl::Verdict::Drop => {
                self.metrics.rrl_dropped.inc();
                Some(false)
            }
            super::rrl::Verdict::Slip => {
                // Truncated and empty: a real client retries over TCP; a spoofed victim
                // gets nothing bigger than its query.
                self.metrics.rrl_slipped.inc();
                let h = ResponseHeader {
                    tc: true,
                    ..ResponseHeader::reply_to(q.id, q.opcode, q.rd, q.cd)
                };
                let opt = q.edns.map(|e| self.opt(e.dnssec_ok, None));
                Some(
                    wire::encode(
                        out,
                        &h,
                        Some(question.raw),
                        &Sections::default(),
                        opt.as_ref(),
                        512,
                    )
                    .is_ok(),
                )
            }
        }
    }

    /// Answers `q`. For a static answer from a zone that was encoded whole and fits the
    /// answer cache, sets `reusable` (given when the query has a cache key) to the zone's query counter (the caller may cache it).
    /// A routed answer sets `ecs_scope` to its ECS scope.
    #[allow(clippy::too_many_arguments)]
    fn respond<'s>(
        &self,
        q: &Query<'_>,
        state: &'s State,
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
        reusable: Option<&mut Option<std::sync::Arc<crate::base::Counter>>>,
        ecs_scope: &mut u8,
        zone_seen: &mut Option<&'s Zone>,
    ) -> bool {
        let mut h = ResponseHeader::reply_to(q.id, q.opcode, q.rd, q.cd);
        let limit = match (transport, &q.edns) {
            (Transport::Tcp, _) => u16::MAX,
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some(e)) => e.payload.min(self.edns_payload),
        };
        let question = q.question.as_ref();
        let qraw = question.map(|qq| qq.raw);
        let empty = Sections::default();
        let reply_error =
            |h: &mut ResponseHeader, code: u16, opt: Option<OptOut>, out: &mut Vec<u8>| {
                h.rcode = code;
                wire::encode(out, h, qraw, &empty, opt.as_ref(), limit).is_ok()
            };

        // RFC 6891 §6.1.3: a version we do not implement gets BADVERS and our version (0).
        if let Some(e) = q.edns.filter(|e| e.version > 0) {
            return reply_error(
                &mut h,
                rcode::BADVERS,
                Some(self.opt(e.dnssec_ok, None)),
                out,
            );
        }
        // Static answers do not depend on the client: echo ECS with scope 0 (RFC 7871 §7.2.1).
        let opt = q
            .edns
            .map(|e| self.opt(e.dnssec_ok, e.ecs.map(|ecs| (ecs, 0))));
        match q.opcode {
            opcode::QUERY => {}
            opcode::NOTIFY | opcode::UPDATE => {
                return reply_error(&mut h, rcode::REFUSED, opt, out);
            }
            _ => return reply_error(&mut h, rcode::NOTIMP, opt, out),
        }
        let Some(question) = question else {
            return reply_error(&mut h, rcode::FORMERR, opt, out);
        };
        let qtype = RecordType::from(question.qtype);
        if question.qclass != u16::from(hickory_server::proto::rr::DNSClass::IN) {
            return reply_error(&mut h, rcode::REFUSED, opt, out);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return reply_error(&mut h, rcode::REFUSED, opt, out);
        }
        if qtype == RecordType::OPT {
            return reply_error(&mut h, rcode::FORMERR, opt, out);
        }
        let Some(zone) = state.zones.find(&question.name) else {
            return reply_error(&mut h, rcode::REFUSED, opt, out);
        };
        *zone_seen = Some(zone);

        zone.queries.inc();
        h.aa = true;
        if question.name.label_count() > zone.origin_labels
            && question.name.lower().get(..5) == Some(b"\x04_why")
            && let Some(p) = state.routing.profile_at(question.name.suffix(1))
        {
            return self.respond_why(q, state, p, qtype, src, h, limit, out);
        }
        if let Some(p) = state.routing.profile_at(question.name.lower()) {
            return self.respond_routed(q, state, zone, p, qtype, src, h, limit, out, ecs_scope);
        }
        let mut s = Sections::default();
        let mut referral = false;
        match zone.lookup(&question.name, qtype) {
            Lookup::Answer(sets) => {
                for (i, link) in sets.iter().enumerate() {
                    s.answer
                        .extend(link.set.records.iter().map(|r| chain_rr(i, link, r)));
                    s.additional.extend(link.set.additional.iter().map(Rr::own));
                }
            }
            Lookup::Partial { chain, nxdomain } => {
                for (i, link) in chain.iter().enumerate() {
                    s.answer
                        .extend(link.set.records.iter().map(|r| chain_rr(i, link, r)));
                }
                if nxdomain {
                    h.rcode = rcode::NXDOMAIN;
                }
                s.authority.push(Rr::at_apex(
                    &zone.negative_soa,
                    zone.negative_soa_wire.as_ref(),
                ));
            }
            Lookup::Exists => s.answer.push(Rr::at_qname(&self.any_hinfo)),
            Lookup::NoData => s.authority.push(Rr::at_apex(
                &zone.negative_soa,
                zone.negative_soa_wire.as_ref(),
            )),
            Lookup::NxDomain => {
                h.rcode = rcode::NXDOMAIN;
                s.authority.push(Rr::at_apex(
                    &zone.negative_soa,
                    zone.negative_soa_wire.as_ref(),
                ));
            }
            Lookup::Referral(ns) => {
                // RFC 1034 §4.3.2: referrals are not authoritative.
                h.aa = false;
                referral = true;
                s.authority.extend(ns.records.iter().map(Rr::own));
                s.additional.extend(ns.additional.iter().map(Rr::own));
            }
        }
        // Encoded whole (nothing trimmed, not truncated) and small: the same bytes answer the
        // same question again, whatever the transport.
        if wire::encode(out, &h, qraw, &s, opt.as_ref(), limit).is_ok() {
            if let Some(reusable) = reusable
                && out.len() <= super::cache::MAX_ANSWER
            {
                *reusable = Some(zone.queries.clone());
            }
            return true;
        }
        finish(out, h, qraw, &mut s, opt, limit, referral)
    }

    /// Answers at a traffic profile's name: locate the client, select, encode with the ECS
    /// scope the decision holds for.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn respond_routed(
        &self,
        q: &Query<'_>,
        state: &State,
        zone: &Zone,
        profile: usize,
        qtype: RecordType,
        src: SocketAddr,
        h: ResponseHeader,
        limit: u16,
        out: &mut Vec<u8>,
        ecs_scope: &mut u8,
    ) -> bool {
        let qraw = q.question.as_ref().map(|qq| qq.raw);
        let ecs = q.edns.and_then(|e| e.ecs);
        let mut s = Sections::default();
        let family = match qtype {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            RecordType::CNAME => Family::Any,
            RecordType::ANY => {
                s.answer.push(Rr::at_qname(&self.any_hinfo));
                let opt = q.edns.map(|o| self.opt(o.dnssec_ok, ecs.map(|e| (e, 0))));
                return finish(out, h, qraw, &mut s, opt, limit, false);
            }
            _ => {
                // The name exists; other types are NODATA, the same for every client.
                s.authority.push(Rr::at_apex(
                    &zone.negative_soa,
                    zone.negative_soa_wire.as_ref(),
                ));
                let opt = q.edns.map(|o| self.opt(o.dnssec_ok, ecs.map(|e| (e, 0))));
                return finish(out, h, qraw, &mut s, opt, limit, false);
            }
        };
        let health = self.health.load();
        let prof = &state.routing.profiles[profile];
        prof.queries.inc();
        // The routed-answer cache (`routed_cache`): a decision of this state and health
        // snapshot for the client's cell is a copy away.
        let generations = (state.generation, health.generation());
        let ecs_addr = ecs.filter(|e| e.source_prefix > 0).map(|e| e.addr);
        let cached = self.answer_cache && state.generation != 0;
        let mut key = routed_cache::Key {
            profile: profile as u32,
            qtype: u16::from(qtype),
            edns: q.edns.map_or(0, |o| 1 + u8::from(o.dnssec_ok)),
            ecs: ecs.map(|e| (e.family, e.source_prefix)),
            net: match ecs_addr {
                Some(a) if cached => state.locator.network(a),
                Some(a) => (a, 0),
                None => (src.ip(), 0),
            },
            resolver: None,
        };
        if cached {
            let (ecs_bytes, ecs_len) = ecs.map_or(([0; 16], 0), |e| e.addr_bytes());
            let patch = routed_cache::Patch {
                id: q.id,
                rd: q.rd,
                cd: q.cd,
                question: qraw.unwrap_or_default(),
                ecs_addr: &ecs_bytes[..ecs_len],
            };
            // Located by the ECS subnet, or no ECS (then the cell is the resolver's network);
            // else an ECS subnet without location, placed at its resolver.
            let hit = if ecs_addr.is_some() {
                routed_cache::lookup(generations, &key, &patch, out).or_else(|| {
                    let mut k = key;
                    k.resolver = Some(state.resolver_network(src.ip()));
                    routed_cache::lookup(generations, &k, &patch, out)
                })
            } else {
                key.net = state.resolver_network(src.ip());
                routed_cache::lookup(generations, &key, &patch, out)
            };
            if let Some(hit) = hit {
                count_routed(state, profile, hit.failed_open, &hit.picked);
                if ecs.is_some() {
                    *ecs_scope = hit.ecs_scope;
                }
                self.metrics.routed_cache_hits.inc();
                return true;
            }
        }
        let (client, placed) = state.locate_client_traced(ecs, src);
        let sel = state
            .routing
            .select(profile, family, &client, &health, None);
        count_routed(state, profile, sel.failed_open, &sel.picked);
        let opt = q
            .edns
            .map(|o| self.opt(o.dnssec_ok, ecs.map(|e| (e, sel.scope))));
        if ecs.is_some() {
            *ecs_scope = sel.scope;
        }
        if sel.records.is_empty() {
            s.authority.push(Rr::at_apex(
                &zone.negative_soa,
                zone.negative_soa_wire.as_ref(),
            ));
        } else {
            s.answer.extend(sel.records.iter().map(|r| Rr {
                record: r,
                at_qname: true,
                ttl: sel.ttl,
                apex: None,
                owner: None,
            }));
        }
        let sent = finish(out, h, qraw, &mut s, opt, limit, false);
        // Kept when the decision holds for the whole cell the key names.
        if sent && cached && !sel.random && sel.bits <= key.net.1 {
            if ecs_addr.is_some() && placed.by != crate::locate::LocatedBy::Ecs {
                key.resolver = Some(state.resolver_network(src.ip()));
            }
            routed_cache::insert(
                generations,
                key,
                qraw.unwrap_or_default(),
                out,
                routed_cache::Hit {
                    ecs_scope: sel.scope,
                    failed_open: sel.failed_open,
                    picked: sel.picked.clone(),
                },
            );
        }
        sent
    }
}

impl Handler {
    /// `_why.<name>` TXT: the decision trace for this client, over DNS itself — only to
    /// sources in `[admin] why_acl` (the trace reveals health and topology). TTL 0 and scope =
    /// the full source prefix: a trace is never to be cached or shared.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn respond_why(
        &self,
        q: &Query<'_>,
        state: &State,
        profile: usize,
        qtype: RecordType,
        src: SocketAddr,
        mut h: ResponseHeader,
        limit: u16,
        out: &mut Vec<u8>,
    ) -> bool {
        let qraw = q.question.as_ref().map(|qq| qq.raw);
        let ecs = q.edns.and_then(|e| e.ecs);
        let opt = q
            .edns
            .map(|o| self.opt(o.dnssec_ok, ecs.map(|e| (e, e.source_prefix))));
        if !state.why_acl.iter().any(|n| n.contains(&src.ip())) {
            h.aa = false;
            h.rcode = rcode::REFUSED;
            return finish(out, h, qraw, &mut Sections::default(), opt, limit, false);
        }
        self.metrics.why_queries.inc();
        let family = if qtype == RecordType::AAAA {
            Family::V6
        } else {
            Family::V4
        };
        let (client, placed) = state.locate_client_traced(ecs, src);
        let health = self.health.load();
        let mut trace = crate::routing::Explain::default();
        let sel = state
            .routing
            .select(profile, family, &client, &health, Some(&mut trace));
        let report = crate::explain::Report::new(
            &state.routing.profiles[profile],
            family,
            src.ip(),
            ecs,
            client.loc,
            placed,
            trace,
            &sel,
        );
        // TXT is best kept ASCII: dig shows other bytes as escapes.
        let lines: Vec<String> = report
            .to_string()
            .replace('→', "->")
            .lines()
            .map(str::to_string)
            .collect();
        let records: Vec<Record> = lines
            .iter()
            .map(|l| {
                let chunks: Vec<String> = l
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                Record::from_rdata(
                    Name::root(),
                    0,
                    RData::TXT(hickory_server::proto::rr::rdata::TXT::new(chunks)),
                )
            })
            .collect();
        let mut s = Sections::default();
        if qtype == RecordType::TXT || qtype == RecordType::ANY {
            s.answer.extend(records.iter().map(|r| Rr {
                record: r,
                at_qname: true,
                ttl: 0,
                apex: None,
                owner: None,
            }));
        }
        finish(out, h, qraw, &mut s, opt, limit, false)
    }
}

/// What RRL counts the response in `out` (to `q`) as. Static answers (and every response
/// without a routed ECS scope) are the same for every client subnet, so the ECS option is part
/// of the key only for a routed answer with scope > 0; NXDOMAIN and NODATA are counted per
/// zone, referrals per zone cut. A response truncated for size counts as the answer it stands
/// for.
fn rrl_kind<'a>(
    q: &'a Query<'_>,
    state: &'a State,
    zone: Option<&'a Zone>,
    ecs_scope: u8,
    out: &[u8],
) -> super::rrl::Kind<'a> {
    use super::rrl::Kind;
    let Some(question) = q.question.as_ref() else {
        return Kind::Error;
    };
    if out.len() < wire::HEADER_LEN || q.edns.is_some_and(|e| e.version > 0) {
        return Kind::Error;
    }
    let (aa, tc) = (out[2] & 0x04 != 0, out[2] & 0x02 != 0);
    let ancount = u16::from_be_bytes([out[6], out[7]]);
    let nscount = u16::from_be_bytes([out[8], out[9]]);
    let qname = question.name.lower();
    let qtype = question.qtype;
    let zone = || zone.or_else(|| state.zones.find(&question.name));
    let apex = || zone().map_or(qname, |z| &*z.origin_wire);
    match u16::from(out[3] & 0x0F) {
        rcode::NOERROR if ancount > 0 || tc => Kind::Answer {
            qname,
            qtype,
            ecs: q
                .edns
                .and_then(|e| e.ecs)
                .filter(|_| ecs_scope > 0)
                .map(|e| (e.addr, ecs_scope)),
        },
        rcode::NOERROR if !aa && nscount > 0 => {
            // The cut is the suffix of the query name with as many labels as the NS owner.
            let cut_labels = zone()
                .and_then(
                    |z| match z.lookup(&question.name, RecordType::from(qtype)) {
                        Lookup::Referral(ns) => ns.records.first().map(|r| r.name.num_labels()),
                        _ => None,
                    },
                )
                .map_or(0, usize::from);
            Kind::Referral {
                cut: question
                    .name
                    .suffix(question.name.label_count().saturating_sub(cut_labels)),
            }
        }
        rcode::NOERROR => Kind::NoData {
            zone: apex(),
            qtype,
        },
        rcode::NXDOMAIN => Kind::NxDomain { zone: apex() },
        _ => Kind::Error,
    }
}

/// One sampled query as a JSON log line (target `geosteer::querylog`).
fn log_query(q: &Query<'_>, src: SocketAddr, transport: Transport, code: u16, out: &[u8]) {
    let Some(question) = q.question.as_ref() else {
        return;
    };
    let ecs = q
        .edns
        .and_then(|e| e.ecs)
        .map(|e| format!("{}/{}", e.addr, e.source_prefix));
    tracing::info!(
        target: "geosteer::querylog",
        src = %src,
        transport = ?transport,
        qname = %question.name.to_dotted(),
        qtype = %RecordType::from(question.qtype),
        ecs = ecs.as_deref().unwrap_or("-"),
        rcode = code,
        answers = u16::from_be_bytes([out[6], out[7]]),
        size = out.len(),
        "query"
    );
}

fn elapsed_ns(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A record of link `i` of an answer or CNAME chain: the first link is owned by the query
/// name — also when synthesized from a wildcard, so the client's spelling (0x20) comes back
/// byte for byte and two names matching one wildcard never share an owner — and later links
/// by their own names, or by the CNAME target they were synthesized for.
/// Counts a routed answer at profile `p`, fresh or copied from the routed-answer cache: a
/// fail-open decision, and an answer for each endpoint picked (as (profile, endpoint) indices).
fn count_routed(state: &State, p: usize, failed_open: bool, picked: &[(u32, u32)]) {
    if failed_open {
        state.routing.profiles[p].fail_open.inc();
    }
    for &(p, e) in picked {
        state.routing.profiles[p as usize].endpoints[e as usize]
            .answers
            .inc();
    }
}

fn chain_rr<'a>(i: usize, link: &crate::zone::Link<'a>, r: &'a Record) -> Rr<'a> {
    match (i, link.owner) {
        (0, _) => Rr::at_qname(r),
        (_, Some(owner)) => Rr::at_owner(r, owner),
        (_, None) => Rr::own(r),
    }
}

/// Encodes, degrading gracefully when the answer does not fit.
fn finish(
    out: &mut Vec<u8>,
    mut h: ResponseHeader,
    qraw: Option<&[u8]>,
    s: &mut Sections<'_>,
    opt: Option<OptOut>,
    limit: u16,
    referral: bool,
) -> bool {
    {
        if wire::encode(out, &h, qraw, s, opt.as_ref(), limit).is_ok() {
            return true;
        }
        // Too big. Additional data is optional (RFC 2181 §9) unless it is referral glue;
        // answer and authority are not, so then set TC and let the client retry over TCP.
        if !referral && !s.additional.is_empty() {
            s.additional.clear();
            if wire::encode(out, &h, qraw, s, opt.as_ref(), limit).is_ok() {
                return true;
            }
        }
        h.tc = true;
        wire::encode(out, &h, qraw, &Sections::default(), opt.as_ref(), limit).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query: `name` (dotted, case kept), type, class, flags, EDNS payload and option bytes.
    fn query(
        id: u16,
        name: &str,
        qtype: u16,
        qclass: u16,
        rd: bool,
        cd: bool,
        edns: Option<(u16, &[u8])>,
    ) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.push(u8::from(rd));
        p.push(u8::from(cd) << 4);
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&qclass.to_be_bytes());
        if let Some((payload, options)) = edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&payload.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0]);
            p.extend_from_slice(&(options.len() as u16).to_be_bytes());
            p.extend_from_slice(options);
        }
        p
    }

    fn handlers() -> (Handler, Handler, Arc<ArcSwap<State>>) {
        let config = crate::config::Config::load(None).expect("embedded config");
        let state = Arc::new(ArcSwap::from_pointee(
            crate::state::build(&config).expect("bundled zones"),
        ));
        let health = Arc::new(ArcSwap::from_pointee(HealthSnapshot::default()));
        let metrics = Arc::new(Metrics::default());
        let cached = Handler::new(state.clone(), health.clone(), metrics.clone(), 1232);
        let plain = Handler::new(state.clone(), health, metrics, 1232).without_answer_cache();
        (cached, plain, state)
    }

    /// Every query is answered byte for byte the same with and without the answer cache, on
    /// the first (miss) and second (hit) asking, whatever varies between queries for the same
    /// name: ID, case, RD/CD, EDNS or not and its buffer size, UDP or TCP — and client-dependent
    /// answers (profiles, ECS, `_why`) are never reused across clients.
    #[test]
    fn cached_answers_are_identical_to_fresh_ones() {
        let (cached, plain, _) = handlers();
        let names = [
            "www.example.test",
            "WwW.ExAmPlE.TeSt",
            "example.test",
            "EXAMPLE.TEST",
            "mail.example.test",
            "alias.example.test",
            "a.b.deep.example.test",
            "b.deep.example.test",
            "nope.example.test",
            "x.sub.example.test",
            "big.example.test",
            "mqtt.example.test",
            "_why.mqtt.example.test",
            "www.other.test",
        ];
        let types = [1u16, 28, 15, 16, 2, 6, 255, 5, 252];
        let ecs: &[u8] = &[0, 8, 0, 7, 0, 1, 24, 0, 81, 2, 69];
        let edns: [Option<(u16, &[u8])>; 4] =
            [None, Some((512, &[])), Some((1232, &[])), Some((4096, ecs))];
        let sources: [SocketAddr; 2] = [
            ([127, 0, 0, 1], 5000).into(),
            ([198, 51, 100, 9], 5000).into(),
        ];
        let mut id = 0u16;
        let mut compared = 0;
        for name in names {
            for qtype in types {
                for e in edns {
                    for (rd, cd) in [(true, false), (false, true)] {
                        for transport in [Transport::Udp, Transport::Tcp] {
                            for src in sources {
                                id = id.wrapping_add(7919);
                                let p = query(id, name, qtype, 1, rd, cd, e);
                                let (mut a, mut b) = (Vec::new(), Vec::new());
                                let sa = plain.handle(&p, src, transport, &mut a);
                                for round in 0..2 {
                                    let before = cached.metrics.answer_cache_hits.get();
                                    let sb = cached.handle(&p, src, transport, &mut b);
                                    let hit = cached.metrics.answer_cache_hits.get() > before;
                                    let client_dependent =
                                        name.to_ascii_lowercase().contains("mqtt")
                                            || e.is_some_and(|(_, o)| !o.is_empty());
                                    assert!(
                                        !(hit && client_dependent),
                                        "{name} {qtype} {e:?}: served from the cache"
                                    );
                                    assert!(
                                        !(hit && name.ends_with("other.test")),
                                        "{name}: out of zone cached"
                                    );
                                    assert_eq!(sa, sb, "{name} {qtype} {e:?} round {round}");
                                    assert_eq!(
                                        a, b,
                                        "{name} {qtype} {e:?} {transport:?} rd={rd} round {round}"
                                    );
                                    compared += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(compared > 8_000, "{compared}");
        // The cache was really used.
        let hits = cached.metrics.answer_cache_hits.get();
        assert!(hits > 1_000, "{hits} hits of {compared}");
    }

    /// Answers synthesized from a wildcard (`*.devices.example.test` in the bundled zone) are
    /// cached per query name: a hit for one name is never served to another name the wildcard
    /// matches, and each answer is byte for byte the uncached one (owner = the asked name).
    #[test]
    fn wildcard_answers_are_cached_per_name() {
        let (cached, plain, _) = handlers();
        let src: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let names = [
            "a.devices.example.test",
            "b.devices.example.test",
            "A.Devices.Example.Test",
            "x.y.devices.example.test",
            "b.devices.example.test",
            "devices.example.test",
        ];
        let mut id = 0u16;
        for round in 0..3 {
            for name in names {
                for qtype in [1u16, 28, 5, 255] {
                    id = id.wrapping_add(1);
                    let p = query(id, name, qtype, 1, true, false, Some((1232, &[])));
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    assert!(plain.handle(&p, src, Transport::Udp, &mut a));
                    assert!(cached.handle(&p, src, Transport::Udp, &mut b));
                    assert_eq!(a, b, "{name} {qtype} round {round}");
                    if qtype == 1 && name != "devices.example.test" {
                        // One A record, owned by the question (pointer to offset 12).
                        assert_eq!(&a[6..8], &[0, 1], "{name}");
                        let answer = 12 + p.len() - 12 - 11;
                        assert_eq!(&a[answer..answer + 2], &[0xC0, 0x0C], "{name}");
                    }
                }
            }
        }
        assert!(cached.metrics.answer_cache_hits.get() > 40);
    }

    /// A reload (a new state) empties the cache: an answer changed by the reload is served
    /// changed at once.
    #[test]
    fn a_new_state_is_never_answered_from_the_old_cache() {
        let (cached, _, state) = handlers();
        let p = query(1, "www.example.test", 1, 1, true, false, Some((1232, &[])));
        let src: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let (mut first, mut again) = (Vec::new(), Vec::new());
        assert!(cached.handle(&p, src, Transport::Udp, &mut first));
        assert!(cached.handle(&p, src, Transport::Udp, &mut again));
        assert_eq!(first, again);
        // The same zones under a new generation, but without www: NXDOMAIN now.
        let mut next = crate::state::build(&crate::config::Config::load(None).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string("zones/example.test.zone")
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("www"))
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.path().join("example.test.zone");
        std::fs::write(&path, &text).unwrap();
        next.zones =
            crate::zone::ZoneSet::new(vec![crate::zone::load_zone_text(&path, &text).unwrap()]);
        state.store(Arc::new(next));
        let mut after = Vec::new();
        assert!(cached.handle(&p, src, Transport::Udp, &mut after));
        assert_eq!(
            after[3] & 0x0F,
            rcode::NXDOMAIN as u8,
            "answered from the old state's cache"
        );
    }
}

#[cfg(test)]
mod location_chain_tests {
    use super::*;
    use crate::locate::LocatedBy;

    fn state() -> State {
        let config = crate::config::Config::load(None).expect("embedded config");
        crate::state::build(&config).expect("bundled zones")
    }

    fn ecs(net: &str) -> Option<wire::ClientSubnet> {
        let n: ipnet::IpNet = net.parse().unwrap();
        Some(wire::ClientSubnet {
            family: if n.addr().is_ipv4() { 1 } else { 2 },
            source_prefix: n.prefix_len(),
            addr: n.addr(),
        })
    }

    /// ECS location, else the resolver's, else none; the client's address and network stay
    /// the ECS ones on the resolver step (they bound the scope and match subnets and drills).
    #[test]
    fn ecs_then_resolver_then_nothing() {
        let s = state();
        let located: SocketAddr = ([127, 0, 0, 1], 53).into(); // Frankfurt in the sample
        let unknown: SocketAddr = ([10, 9, 9, 9], 53).into(); // absent from the sample
        // (ECS, source, step, ECS unlocated, located from, client address, network, country)
        let rows = [
            (
                ecs("81.2.69.0/24"),
                unknown,
                LocatedBy::Ecs,
                false,
                Some("81.2.69.0"),
                "81.2.69.0",
                24,
                Some("GB"),
            ),
            (
                ecs("10.1.2.0/24"),
                located,
                LocatedBy::Resolver,
                true,
                Some("127.0.0.1"),
                "10.1.2.0",
                7,
                Some("DE"),
            ),
            (
                ecs("fd00:1::/48"),
                ([0, 0, 0, 0, 0, 0, 0, 1], 53).into(),
                LocatedBy::Resolver,
                true,
                Some("::1"),
                "fd00:1::",
                1, // nothing at all in 8000::/1 of the sample database
                Some("DE"),
            ),
            (
                ecs("10.1.2.0/24"),
                unknown,
                LocatedBy::None,
                true,
                None,
                "10.1.2.0",
                7,
                None,
            ),
            (
                None,
                located,
                LocatedBy::Resolver,
                false,
                Some("127.0.0.1"),
                "127.0.0.1",
                8,
                Some("DE"),
            ),
            (
                ecs("0.0.0.0/0"),
                located,
                LocatedBy::Resolver,
                false,
                Some("127.0.0.1"),
                "127.0.0.1",
                8,
                Some("DE"),
            ),
            (
                None,
                unknown,
                LocatedBy::None,
                false,
                None,
                "10.9.9.9",
                7,
                None,
            ),
        ];
        for (e, src, by, ecs_unlocated, from, addr, prefix, country) in rows {
            let (c, p) = s.locate_client_traced(e, src);
            let what = format!("{e:?} from {src}");
            assert_eq!(p.by, by, "{what}");
            assert_eq!(p.ecs_unlocated, ecs_unlocated, "{what}");
            assert_eq!(p.from.map(|a| a.to_string()).as_deref(), from, "{what}");
            assert_eq!(
                c.loc.addr.map(|a| a.to_string()).as_deref(),
                Some(addr),
                "{what}"
            );
            assert_eq!(c.loc.prefix_len, prefix, "{what}");
            assert_eq!(
                c.loc.country.map(|c| c.to_string()).as_deref(),
                country,
                "{what}"
            );
            assert_eq!(c.ecs_source, e.map(|e| e.source_prefix), "{what}");
        }
    }
}

#[cfg(test)]
mod do_bit_tests {
    use super::*;

    /// `www.example.test` A with an OPT whose DO bit is `dnssec_ok`, or no OPT.
    fn query(id: u16, edns: Option<bool>) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
        p.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
        if let Some(dnssec_ok) = edns {
            p.extend_from_slice(&[
                0,
                0,
                41,
                0x04,
                0xd0,
                0,
                0,
                u8::from(dnssec_ok) << 7,
                0,
                0,
                0,
            ]);
        }
        p
    }

    /// The DO bit of the answer's OPT (`None`: no OPT). Static answers without ECS end with
    /// the 11-byte OPT.
    fn do_bit(answer: &[u8]) -> Option<bool> {
        let arcount = u16::from_be_bytes([answer[10], answer[11]]);
        let opt = answer.len().checked_sub(11)?;
        (arcount > 0 && answer[opt + 1..opt + 3] == [0, 41]).then(|| answer[opt + 7] & 0x80 != 0)
    }

    /// A cached answer carries the DO bit of the query it answers, never that of the query it
    /// was cached for.
    #[test]
    fn cached_answers_copy_the_do_bit_of_their_own_query() {
        let config = crate::config::Config::load(None).expect("embedded config");
        let state = Arc::new(ArcSwap::from_pointee(
            crate::state::build(&config).expect("bundled zones"),
        ));
        let health = Arc::new(ArcSwap::from_pointee(HealthSnapshot::default()));
        let metrics = Arc::new(Metrics::default());
        let h = Handler::new(state, health, metrics.clone(), 1232);
        let src: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let order = [
            Some(true),
            Some(true),
            Some(false),
            Some(false),
            Some(true),
            None,
            Some(true),
        ];
        let mut out = Vec::new();
        for (i, edns) in order.into_iter().enumerate() {
            assert!(h.handle(&query(i as u16, edns), src, Transport::Udp, &mut out));
            assert_eq!(do_bit(&out), edns, "query {i} ({edns:?})");
        }
        assert!(metrics.answer_cache_hits.get() >= 3, "the cache was used");
    }
}
