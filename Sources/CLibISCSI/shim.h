#ifndef LIVEMOUNT_CLIBISCSI_SHIM_H
#define LIVEMOUNT_CLIBISCSI_SHIM_H
#include <stdint.h>
#include <stddef.h>
#include <time.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#endif
