#ifndef LIVEMOUNT_CLIBAIO_SHIM_H
#define LIVEMOUNT_CLIBAIO_SHIM_H
#include <libaio.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <unistd.h>
#endif
