// The SSD-tier read cache and the persistent write overlay (DESIGN.md, Formats: Cache tier).
import Repository
