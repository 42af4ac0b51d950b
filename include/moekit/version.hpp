#pragma once
// moekit's version: the inline namespace moekit::v<MAJOR>_<MINOR> is stamped from it, so two
// builds of different versions never merge symbols in one program.

#define MOEKIT_VERSION_MAJOR 0
#define MOEKIT_VERSION_MINOR 1
#define MOEKIT_VERSION_PATCH 0
#define MOEKIT_VERSION (MOEKIT_VERSION_MAJOR * 10000 + MOEKIT_VERSION_MINOR * 100 + MOEKIT_VERSION_PATCH)
