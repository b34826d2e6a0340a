// The sixteen-lane kernel is github.com/minio/sha256-simd's, linked by name
// from sha256x16_amd64.go; this file only lets that body-less declaration
// compile.
