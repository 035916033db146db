// Composition of a live-mounted LUN: overlay → cache → backup chunks (DESIGN.md, The parts).
import Cache
import Repository
