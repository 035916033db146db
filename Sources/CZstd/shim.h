#ifndef LIVEMOUNT_CZSTD_SHIM_H
#define LIVEMOUNT_CZSTD_SHIM_H
#include <zstd.h>
#endif
