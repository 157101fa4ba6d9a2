//! A data-plane proxy that corrupts every piece it relays: a parent that
//! lies, for the tests that prove lies are caught.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

const REQUEST_LEN: usize = 48;
const RESPONSE_LEN: usize = 16;

/// Listens on a free port and relays to `upstream`, flipping one byte of
/// every piece. Returns the port. Runs until the process ends.
pub fn start_tamper_proxy(upstream: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tamper proxy");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let _ = relay(client, &upstream);
            });
        }
    });
    port
}

fn relay(mut client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    loop {
        let mut request = [0u8; REQUEST_LEN];
        client.read_exact(&mut request)?;
        server.write_all(&request)?;
        let mut header = [0u8; RESPONSE_LEN];
        server.read_exact(&mut header)?;
        client.write_all(&header)?;
        let length = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let mut body = vec![0u8; length];
        server.read_exact(&mut body)?;
        if header[0] == 0 && !body.is_empty() {
            let middle = body.len() / 2;
            body[middle] ^= 0xff;
        }
        client.write_all(&body)?;
    }
}
