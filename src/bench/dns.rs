//! A loopback DNS responder for `inbound bench --mode auth`: a fixed zone of TXT records over
//! UDP on 127.0.0.1, authoritative NXDOMAIN for every other name (so no query leaves the
//! machine), NODATA for other types of a name it has. Just enough for SPF, DKIM and DMARC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::TXT;
use mail_auth::hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// TXT records by owner name (lower case, no final dot).
pub type Zone = HashMap<String, Vec<String>>;

pub struct BenchDns {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BenchDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Largest character-string in a TXT record (its length is one octet).
const TXT_STRING_MAX: usize = 255;

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    let mut code = ResponseCode::NoError;
    for q in &request.queries {
        response.add_query(q.clone());
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        match zone.get(&name) {
            None => code = ResponseCode::NXDomain,
            Some(texts) if q.query_type() == RecordType::TXT => {
                for t in texts {
                    let strings: Vec<String> = t
                        .as_bytes()
                        .chunks(TXT_STRING_MAX)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    response.add_answer(Record::from_rdata(q.name().clone(), 3600, RData::TXT(TXT::new(strings))));
                }
            }
            Some(_) => {}
        }
    }
    response.metadata.response_code = code;
    response.to_vec().ok()
}

/// Serve `zone` on an ephemeral UDP port of 127.0.0.1 until dropped.
pub async fn start(zone: Zone) -> std::io::Result<BenchDns> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let zone = Arc::new(zone);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
            if let Some(reply) = answer(&zone, &buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    Ok(BenchDns { addr, task })
}
