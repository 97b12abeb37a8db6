//! A connection's read buffer: grows while reads fill it, shrinks back when the
//! connection idles, so an idle connection costs little memory and a busy one reads in
//! large chunks. Shared by the client and route actors.

pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Space offered to the last read; a read that fills it asks for a bigger buffer.
    offered: usize,
    grow: bool,
}

pub const READ_MIN: usize = 512;
pub const READ_MAX: usize = 64 * 1024;

impl Default for ReadBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadBuf {
    pub fn new() -> Self {
        ReadBuf {
            buf: vec![0; READ_MIN],
            start: 0,
            end: 0,
            offered: 0,
            grow: false,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the unconsumed bytes to the front and makes the buffer at least `len`.
    pub fn compact_to(&mut self, len: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }

    /// Makes room for an operation of `need` bytes (a payload still arriving).
    pub fn reserve(&mut self, need: usize) {
        self.compact_to(need);
    }

    pub fn spare(&mut self) -> &mut [u8] {
        if self.grow {
            self.grow = false;
            self.compact_to((self.buf.len() * 2).min(READ_MAX).max(self.buf.len()));
        }
        if self.end == self.buf.len() {
            let len = self.buf.len();
            self.compact_to(len);
            if self.end == self.buf.len() {
                self.compact_to(len * 2);
            }
        }
        self.offered = self.buf.len() - self.end;
        &mut self.buf[self.end..]
    }

    /// Called after a read of `n` bytes into [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        self.grow = n == self.offered && self.buf.len() < READ_MAX;
    }

    /// Gives memory back once the buffer is empty and the last read was small.
    pub fn maybe_shrink(&mut self, last_read: usize) {
        if self.start == self.end && self.buf.len() > READ_MIN && last_read < self.buf.len() / 4 {
            self.buf = vec![0; (self.buf.len() / 2).max(READ_MIN)];
            self.start = 0;
            self.end = 0;
        }
    }
}
