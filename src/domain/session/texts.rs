//! A live session's strings, kept in one allocation.
//!
//! Every live session names its user, its CSRF token, its family, the address and browser it was
//! started from, and maybe the host it was handed to. As six `String`s those were five or six
//! allocations of at least 32 bytes each, plus 24 bytes of bookkeeping per string, for every one
//! of possibly a hundred thousand sessions; packed, they are one allocation and 24 bytes of
//! offsets (`bench/scale.sh rss`).

use super::record::Device;

const USER: usize = 0;
const CSRF: usize = 1;
const FAMILY: usize = 2;
const ADDRESS: usize = 3;
const BROWSER: usize = 4;
const HOST: usize = 5;

pub(super) struct Texts {
    all: Box<str>,
    /// Where each field ends in `all`; each begins where the one before ends. The host's is
    /// [`NO_HOST`] when there is none.
    ends: [u32; 6],
}

const NO_HOST: u32 = u32::MAX;

impl Texts {
    pub(super) fn new(user: &str, csrf_token: &str, family: &str, device: &Device, host: Option<&str>) -> Self {
        let fields = [user, csrf_token, family, &device.address, &device.browser, host.unwrap_or("")];
        let mut all = String::with_capacity(fields.iter().map(|f| f.len()).sum());
        let mut ends = [0; 6];
        for (end, field) in ends.iter_mut().zip(fields) {
            all.push_str(field);
            // Each field is bounded far below 4 GiB (a request head is, and so is everything a
            // session is made from); saturating keeps a slice in bounds whatever comes.
            *end = u32::try_from(all.len()).unwrap_or(u32::MAX);
        }
        if host.is_none() {
            ends[HOST] = NO_HOST;
        }
        Self { all: all.into_boxed_str(), ends }
    }

    fn field(&self, index: usize) -> &str {
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        self.all.get(start..self.ends[index] as usize).unwrap_or("")
    }

    pub(super) fn user(&self) -> &str {
        self.field(USER)
    }

    pub(super) fn csrf_token(&self) -> &str {
        self.field(CSRF)
    }

    pub(super) fn family(&self) -> &str {
        self.field(FAMILY)
    }

    pub(super) fn device(&self) -> Device {
        Device { address: self.field(ADDRESS).to_string(), browser: self.field(BROWSER).to_string() }
    }

    pub(super) fn host(&self) -> Option<&str> {
        (self.ends[HOST] != NO_HOST).then(|| self.field(HOST))
    }
}

#[cfg(test)]
mod tests {
    use super::{Device, Texts};

    #[test]
    fn each_field_comes_back_as_it_went_in() {
        let device = Device { address: "2001:db8::1".into(), browser: "Firefox on Linux – ünïcode".into() };
        let texts = Texts::new("alice", "csrf-token", "family", &device, Some("wiki.example.com"));
        assert_eq!(texts.user(), "alice");
        assert_eq!(texts.csrf_token(), "csrf-token");
        assert_eq!(texts.family(), "family");
        assert_eq!(texts.device(), device);
        assert_eq!(texts.host(), Some("wiki.example.com"));
        let empty = Texts::new("", "", "", &Device::default(), None);
        assert_eq!((empty.user(), empty.csrf_token(), empty.family(), empty.host()), ("", "", "", None));
        assert_eq!(empty.device(), Device::default());
        // An empty host is still a host.
        assert_eq!(Texts::new("bob", "t", "f", &Device::default(), Some("")).host(), Some(""));
    }
}
