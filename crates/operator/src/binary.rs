//! What the bench can tell about a measured executable without running it: how it was linked (the C library and
//! static or dynamic, from tools/static-link's mark in `.comment` and the ELF program headers), and what one exec
//! of it costs (a `VERSION` call, which does no work beyond starting and printing).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const PT_INTERP: u32 = 3;
const MARK: &[u8] = b"trestle-link: ";

/// How an executable is linked, e.g. `musl static-pie`, `glibc dynamic`, `static (no C library mark)`.
pub fn link_mode(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(elf) => describe(&elf),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// `link_mode` of an ELF image in memory.
pub fn describe(elf: &[u8]) -> String {
    let Some(headers) = Elf64::parse(elf) else {
        return "not a 64-bit little-endian ELF".into();
    };
    if let Some(mark) = headers
        .section(elf, ".comment")
        .and_then(|c| c.split(|&b| b == 0).find(|s| s.starts_with(MARK)))
    {
        return String::from_utf8_lossy(&mark[MARK.len()..]).into_owned();
    }
    match headers.interp(elf) {
        Some(interp) => format!("dynamic ({interp})"),
        None => "static".into(),
    }
}

/// The program interpreter (dynamic loader) an ELF executable names in a `PT_INTERP` header, if any: an
/// executable with one cannot run where that loader is missing (an image holding nothing else). Anything this
/// cannot parse names none.
pub fn interpreter(elf: &[u8]) -> Option<String> {
    Elf64::parse(elf)?.interp(elf)
}

/// The median wall time, in milliseconds, of `runs` execs of `plugin` answering `CNI_COMMAND=VERSION`.
pub fn exec_cost_ms(plugin: &Path, runs: usize) -> Option<f64> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new(plugin)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            return None;
        }
    }
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied()
}

/// The parts of an ELF64 (little-endian) header the description needs.
struct Elf64 {
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

impl Elf64 {
    fn parse(b: &[u8]) -> Option<Elf64> {
        // "\x7fELF", class 2 (64-bit), data 1 (little-endian).
        if b.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        Some(Elf64 {
            phoff: u64_at(b, 0x20)?,
            shoff: u64_at(b, 0x28)?,
            phentsize: u16_at(b, 0x36)?,
            phnum: u16_at(b, 0x38)?,
            shentsize: u16_at(b, 0x3a)?,
            shnum: u16_at(b, 0x3c)?,
            shstrndx: u16_at(b, 0x3e)?,
        })
    }

    /// The program interpreter (the dynamic loader), when there is one.
    fn interp(&self, b: &[u8]) -> Option<String> {
        (0..self.phnum).find_map(|i| {
            let ph = self.phoff + i * self.phentsize;
            if u32_at(b, ph)? != PT_INTERP {
                return None;
            }
            let (off, size) = (u64_at(b, ph + 8)?, u64_at(b, ph + 32)?);
            let path = b.get(off..off.checked_add(size)?)?;
            Some(String::from_utf8_lossy(path.split(|&c| c == 0).next()?).into_owned())
        })
    }

    /// The contents of section `name`.
    fn section<'a>(&self, b: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let header = |i: usize| -> Option<(usize, usize, usize)> {
            let sh = self.shoff + i * self.shentsize;
            Some((
                u32_at(b, sh)? as usize,
                u64_at(b, sh + 0x18)?,
                u64_at(b, sh + 0x20)?,
            ))
        };
        let (_, names_off, names_size) = header(self.shstrndx)?;
        let names = b.get(names_off..names_off.checked_add(names_size)?)?;
        (0..self.shnum).find_map(|i| {
            let (name_at, off, size) = header(i)?;
            let this = names.get(name_at..)?.split(|&c| c == 0).next()?;
            (this == name.as_bytes()).then(|| b.get(off..off.checked_add(size)?))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_carries_the_linkers_mark_and_matches_it() {
        let exe = std::env::current_exe().unwrap();
        let mode = link_mode(&exe);
        // Linked by tools/static-link (the workspace's linker): it marks every executable it rewrites or passes.
        let elf = std::fs::read(&exe).unwrap();
        assert!(
            elf.windows(MARK.len()).any(|w| w == MARK),
            "not linked by tools/static-link: {mode}"
        );
        let (libc, kind) = mode.split_once(' ').unwrap();
        let interp = Elf64::parse(&elf).unwrap().interp(&elf);
        assert_eq!(
            kind == "dynamic",
            interp.is_some(),
            "{mode}, interp {interp:?}"
        );
        // glibc answers _CS_GNU_LIBC_VERSION; musl does not know the name.
        let mut buf = [0u8; 64];
        // SAFETY: the buffer is writable for its whole length, which is passed.
        let n = unsafe {
            libc::confstr(
                libc::_CS_GNU_LIBC_VERSION,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(libc == "glibc", n > 0, "{mode}");
    }

    #[test]
    fn garbage_and_truncated_images_are_described_not_panicked_on() {
        assert_eq!(describe(b"#!/bin/sh\n"), "not a 64-bit little-endian ELF");
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for cut in [64, 4096, exe.len() / 2] {
            let _ = describe(&exe[..cut]);
        }
    }

    /// A 64-bit little-endian ELF header with program headers of the given types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56 * types.len()];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            e[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        e
    }

    #[test]
    fn a_program_interpreter_means_dynamic() {
        assert_eq!(interpreter(&elf(&[1, 1, 4])), None);
        assert!(interpreter(&elf(&[6, 3, 1])).is_some());
        assert_eq!(interpreter(b"#!/bin/sh\n"), None);
        // Program headers that point past the end are not read.
        let mut cut = elf(&[1, 3]);
        cut.truncate(100);
        assert_eq!(interpreter(&cut), None);
        // The machine's shell is dynamic (Debian's), and names its loader.
        if let Ok(sh) = std::fs::read("/bin/sh") {
            let loader = interpreter(&sh).expect("/bin/sh is dynamic");
            assert!(loader.contains("ld-"), "{loader}");
        }
    }

    #[test]
    fn exec_cost_is_measured_for_a_program_that_succeeds_only() {
        assert!(exec_cost_ms(Path::new("/bin/true"), 3).unwrap() > 0.0);
        assert_eq!(exec_cost_ms(Path::new("/bin/false"), 3), None);
    }
}
