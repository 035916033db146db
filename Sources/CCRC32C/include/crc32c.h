#ifndef LIVEMOUNT_CRC32C_H
#define LIVEMOUNT_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/// Updates a running CRC32C (Castagnoli, RFC 3720 Appendix B.4) over `len`
/// bytes. `crc` is the raw register value: start with 0xFFFFFFFF and
/// complement the result. Uses SSE4.2's crc32 instruction when the CPU has it.
uint32_t livemount_crc32c_update(uint32_t crc, const void *data, size_t len);

/// The same, always with the portable (table) code: the reference the hardware
/// path is tested against.
uint32_t livemount_crc32c_update_portable(uint32_t crc, const void *data, size_t len);

/// Returns 1 when the hardware path is in use.
int livemount_crc32c_hardware(void);
#endif
