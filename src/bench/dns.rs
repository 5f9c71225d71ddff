//! A loopback DNS responder for `inbound bench --mode auth`: a fixed zone of TXT records over
//! UDP on 127.0.0.1, authoritative NXDOMAIN for every other name (so no query leaves the
//! machine), NODATA for other types of a name it has. Just enough for SPF, DKIM and DMARC. It
//! runs on a thread of its own for the life of the process, independent of the bench's runtime.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{SOA, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// TXT records by owner name (lower case, no final dot).
pub type Zone = HashMap<String, Vec<String>>;

/// Largest character-string in a TXT record (its length is one octet).
const TXT_STRING_MAX: usize = 255;

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    let mut code = ResponseCode::NoError;
    let mut negative = false;
    for q in &request.queries {
        response.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match zone.get(&name) {
            None => {
                code = ResponseCode::NXDomain;
                negative = true;
            }
            Some(texts) if q.query_type() == RecordType::TXT => {
                for t in texts {
                    let strings: Vec<String> = t
                        .as_bytes()
                        .chunks(TXT_STRING_MAX)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    let rdata = RData::TXT(TXT::new(strings));
                    response.add_answer(Record::from_rdata(q.name().clone(), 3600, rdata));
                }
            }
            Some(_) => negative = true,
        }
    }
    // As a real authoritative server does: the SOA with a negative TTL (RFC 2308), so resolvers
    // cache NXDOMAIN/NODATA instead of asking again for every message.
    if negative {
        let apex = Name::from_ascii("bench.example.").ok()?;
        let soa = SOA::new(apex.clone(), apex.clone(), 1, 3600, 600, 86400, 300);
        response.add_authority(Record::from_rdata(apex, 300, RData::SOA(soa)));
    }
    response.metadata.response_code = code;
    response.to_vec().ok()
}

/// Serve `zone` on an ephemeral UDP port of 127.0.0.1 until the process exits.
pub fn start(zone: Zone) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::Builder::new()
        .name("bench-dns".into())
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&zone, &buf[..n]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        })?;
    Ok(addr)
}
