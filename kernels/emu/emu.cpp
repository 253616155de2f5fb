// kernels/emu/emu.cpp: the emulator's scheduler. A launch runs its blocks one after another;
// the threads of a block are fibers on the calling OS thread, resumed round-robin
// until each waits at a barrier or returns, then barriers whose waiters are complete open.
// Deterministic: the same launch always interleaves the same way. Neighbours: emu.h (the CUDA
// surface the kernels see), launchers.cpp (extern "C" entry points for the Rust tests).
#include "emu.h"

// x86-64 uses the hand-written switch below; other targets (or -DEMU_USE_UCONTEXT) ucontext.
#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_FAST_SWITCH 1
#else
#define EMU_FAST_SWITCH 0
#include <ucontext.h>
#endif

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if EMU_FAST_SWITCH
// gradients_emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control
// word on the current stack, stores the stack pointer in *save, switches to `to` and restores
// the same from there (System V x86-64). No signal-mask syscall, unlike swapcontext.
extern "C" void gradients_emu_switch(void** save, void* to);
asm(R"(
  .text
  .p2align 4
  .globl gradients_emu_switch
  .hidden gradients_emu_switch
  .type gradients_emu_switch,@function
gradients_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gradients_emu_switch,.-gradients_emu_switch
)");
#endif

namespace emu {

thread_local ThreadState* cur_thread = nullptr;
thread_local BlockState* cur_block = nullptr;

namespace {

enum class St { Run, AtSync, AtWarp, Done, Failed };

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuard = 0xA5;
constexpr unsigned char kPoison = 0xFF;
constexpr unsigned kMmaWords = 6;  // per lane: the A fragment (4 registers), then B (2)

struct Fiber {
#if EMU_FAST_SWITCH
  void* sp;
#else
  ucontext_t ctx;
#endif
  ThreadState ts;
  St state;
  const char* file;
  int line;
  unsigned wmask;
  const char* what;
};

struct Sched {
#if EMU_FAST_SWITCH
  void* main_sp;
#else
  ucontext_t main;
#endif
  std::unique_ptr<Fiber[]> fibers;
  char* stacks = nullptr;  // n * kStackBytes, owned by t_stacks
  std::vector<uint64_t> slots;  // 32 per warp
  std::vector<uint32_t> wide;   // 32 × kMmaWords per warp: the mma exchange
  unsigned n = 0;
  unsigned cur = 0;
  const std::function<void()>* body = nullptr;
  std::string error;
  BlockState block;
};

thread_local Sched* g_sched = nullptr;
// Fiber stacks, kept across this OS thread's launches (fresh pages fault in on every launch).
thread_local std::unique_ptr<char[]> t_stacks;
thread_local size_t t_stack_fibers = 0;
std::mutex g_launch_mutex;
thread_local std::string g_last_error;
thread_local bool g_reverse = false;  // resume fibers from the last thread to the first

// Fiber -> scheduler.
void yield_to_scheduler() {
  Sched* s = g_sched;
#if EMU_FAST_SWITCH
  gradients_emu_switch(&s->fibers[s->cur].sp, s->main_sp);
#else
  swapcontext(&s->fibers[s->cur].ctx, &s->main);
#endif
}

// Scheduler -> fiber i.
void resume(Sched& s, unsigned i) {
#if EMU_FAST_SWITCH
  gradients_emu_switch(&s.main_sp, s.fibers[i].sp);
#else
  swapcontext(&s.main, &s.fibers[i].ctx);
#endif
}

[[noreturn]] void fiber_entry() {
  Sched* s = g_sched;
  (*s->body)();
  s->fibers[s->cur].state = St::Done;
  yield_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

// Prepares fiber f to start in fiber_entry on the stack [stack, stack + bytes).
void init_context(Sched& s, Fiber& f, char* stack, size_t bytes) {
#if EMU_FAST_SWITCH
  (void)s;
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  void** p = reinterpret_cast<void**>(top);
  *--p = nullptr;                                         // fiber_entry's (unused) return address
  *--p = reinterpret_cast<void*>(&fiber_entry);           // popped by gradients_emu_switch's ret
  for (int r = 0; r < 6; ++r) *--p = nullptr;              // rbp rbx r12 r13 r14 r15
  --p;
  const uint32_t mxcsr = 0x1F80;                          // default SSE control: RNE, masked
  const uint16_t fpucw = 0x037F;                          // default x87 control word
  std::memcpy(reinterpret_cast<char*>(p), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(p) + 4, &fpucw, 2);
  f.sp = p;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = bytes;
  f.ctx.uc_link = &s.main;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

// Lanes of warp `w` that exist and have not returned.
unsigned warp_live(const Sched& s, unsigned w) {
  unsigned m = 0;
  for (unsigned l = 0; l < 32 && w * 32 + l < s.n; ++l) {
    St st = s.fibers[w * 32 + l].state;
    if (st != St::Done) m |= 1u << l;
  }
  return m;
}
unsigned warp_exist(const Sched& s, unsigned w) {
  unsigned k = s.n - w * 32;
  return k >= 32 ? 0xffffffffu : ((1u << k) - 1u);
}

std::string describe(const Sched& s, unsigned i) {
  const Fiber& f = s.fibers[i];
  char buf[256];
  std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.ts.tid.x, f.ts.tid.y, f.ts.tid.z,
                s.block.block_idx.x, s.block.block_idx.y, s.block.block_idx.z);
  return buf;
}

// Runs one block to completion; false (with s.error set) on a launch error.
bool run_block(Sched& s) {
  const dim3 bd = s.block.block_dim;
  char* stacks = s.stacks;
  for (unsigned i = 0; i < s.n; ++i) {
    Fiber& f = s.fibers[i];
    f.ts.tid = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    f.ts.linear = i;
    f.ts.lane = i % 32;
    f.ts.warp = i / 32;
    f.state = St::Run;
    f.file = nullptr;
    f.line = 0;
    init_context(s, f, stacks + size_t(i) * kStackBytes, kStackBytes);
  }
  const unsigned nwarps = (s.n + 31) / 32;
  for (;;) {
    for (unsigned k = 0; k < s.n; ++k) {
      const unsigned i = g_reverse ? s.n - 1 - k : k;
      if (s.fibers[i].state != St::Run) continue;
      s.cur = i;
      cur_thread = &s.fibers[i].ts;
      resume(s, i);
      if (!s.error.empty()) return false;
    }
    bool released = false;
    for (unsigned w = 0; w < nwarps; ++w) {
      unsigned live = warp_live(s, w);
      if (!live) continue;
      bool all = true;
      for (unsigned l = 0; l < 32; ++l)
        if (((live >> l) & 1u) && s.fibers[w * 32 + l].state != St::AtWarp) all = false;
      if (!all) continue;
      for (unsigned l = 0; l < 32; ++l) {
        if (!((live >> l) & 1u)) continue;
        Fiber& f = s.fibers[w * 32 + l];
        if ((f.wmask & warp_exist(s, w)) != live) {
          char buf[160];
          std::snprintf(buf, sizeof buf, "%s: mask 0x%08x but the live lanes of warp %u are 0x%08x (", f.what,
                        f.wmask, w, live);
          s.error = std::string(buf) + describe(s, w * 32 + l) + ")";
          return false;
        }
        f.state = St::Run;
      }
      released = true;
    }
    if (released) continue;
    unsigned first = s.n;
    bool all_sync = true;
    for (unsigned i = 0; i < s.n; ++i) {
      St st = s.fibers[i].state;
      if (st == St::Done) continue;
      if (first == s.n) first = i;
      if (st != St::AtSync) all_sync = false;
    }
    if (first == s.n) return true;  // every thread returned
    if (!all_sync) {
      for (unsigned i = 0; i < s.n; ++i) {
        const Fiber& f = s.fibers[i];
        if (f.state == St::AtWarp) {
          s.error = "deadlock: " + describe(s, i) + " waits in " + f.what +
                    " while other lanes of its warp wait at __syncthreads or elsewhere";
          return false;
        }
      }
      s.error = "deadlock: no barrier can open";
      return false;
    }
    const Fiber& f0 = s.fibers[first];
    for (unsigned i = first; i < s.n; ++i) {
      Fiber& f = s.fibers[i];
      if (f.state == St::Done) continue;
      if (f.line != f0.line || std::strcmp(f.file, f0.file) != 0) {
        s.error = "divergent __syncthreads: " + describe(s, first) + " at " + f0.file + ":" +
                  std::to_string(f0.line) + ", " + describe(s, i) + " at " + f.file + ":" + std::to_string(f.line);
        return false;
      }
      f.state = St::Run;
    }
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  Sched* s = g_sched;
  Fiber& f = s->fibers[s->cur];
  f.state = St::AtSync;
  f.file = file;
  f.line = line;
  yield_to_scheduler();
}

void warp_barrier(unsigned mask, const char* what) {
  Sched* s = g_sched;
  Fiber& f = s->fibers[s->cur];
  unsigned w = f.ts.warp;
  unsigned live = warp_live(*s, w);
  if ((mask & warp_exist(*s, w)) != live)
    fail("%s: mask 0x%08x but the live lanes of warp %u are 0x%08x", what, mask, w, live);
  f.state = St::AtWarp;
  f.wmask = mask;
  f.what = what;
  yield_to_scheduler();
}

uint64_t* warp_slots() {
  Sched* s = g_sched;
  return s->slots.data() + size_t(cur_thread->warp) * 32;
}

unsigned live_mask() { return warp_live(*g_sched, cur_thread->warp); }

void fail(const char* fmt, ...) {
  Sched* s = g_sched;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  s->error = std::string(buf) + " (" + describe(*s, s->cur) + ")";
  s->fibers[s->cur].state = St::Failed;
  yield_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

namespace {
// Fails the launch unless every lane of the calling thread's warp exists and is live (the
// tensor-core instructions are .aligned: the whole warp executes them together).
void require_full_warp(const char* what) {
  const unsigned live = live_mask();
  if (live != 0xffffffffu) fail("%s needs all 32 lanes of the warp, live lanes are 0x%08x", what, live);
}
float bf16_bits_to_f32(uint32_t bits16) { return __uint_as_float(bits16 << 16); }
}  // namespace

void mma_m16n8k16_bf16(float acc[4], const uint32_t a[4], const uint32_t b[2]) {
  const char* what = "mma.sync.m16n8k16.bf16";
  require_full_warp(what);
  const unsigned lane = cur_thread->lane;
  uint32_t* w = g_sched->wide.data() + size_t(cur_thread->warp) * 32 * kMmaWords;
  std::memcpy(w + lane * kMmaWords, a, 4 * sizeof(uint32_t));
  std::memcpy(w + lane * kMmaWords + 4, b, 2 * sizeof(uint32_t));
  warp_barrier(0xffffffffu, what);
  // Rebuild A (16×16) and B (16×8) from every lane's fragments (PTX ISA, "Matrix Fragments for
  // mma.m16n8k16 with floating point type"; lane = 4g + t, element 2r of register r in the low
  // half): A register r holds row g + 8·(r & 1), columns 2t + 8·(r >> 1) and the next; B register
  // r holds rows 2t + 8r and the next of column g.
  float A[16][16], B[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned g = l >> 2, t = l & 3;
    const uint32_t* f = w + l * kMmaWords;
    for (unsigned r = 0; r < 4; ++r) {
      const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
      A[row][col] = bf16_bits_to_f32(f[r] & 0xffffu);
      A[row][col + 1] = bf16_bits_to_f32(f[r] >> 16);
    }
    for (unsigned r = 0; r < 2; ++r) {
      B[2 * t + 8 * r][g] = bf16_bits_to_f32(f[4 + r] & 0xffffu);
      B[2 * t + 8 * r + 1][g] = bf16_bits_to_f32(f[4 + r] >> 16);
    }
  }
  // This lane's C/D elements: i = 0, 1 at row g, i = 2, 3 at row g + 8; column 2t + (i & 1).
  const unsigned g = lane >> 2, t = lane & 3;
  float d[4];
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float sum = acc[i];
    for (unsigned k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
    d[i] = sum;
  }
  warp_barrier(0xffffffffu, what);
  for (unsigned i = 0; i < 4; ++i) acc[i] = d[i];
}

void ldmatrix_m8n8(uint32_t* r, int num, bool trans, const void* row) {
  const char* what = trans ? "ldmatrix.trans" : "ldmatrix";
  require_full_warp(what);
  if (num != 1 && num != 2 && num != 4) fail("%s: .x%d (only .x1, .x2 and .x4 exist)", what, num);
  const unsigned lane = cur_thread->lane;
  const uintptr_t p = reinterpret_cast<uintptr_t>(row);
  if (lane < 8u * unsigned(num)) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(cur_block->dyn_smem), hi = lo + cur_block->dyn_smem_bytes;
    if (p % 16 != 0) fail("%s: lane %u's row address %p is not 16-byte aligned", what, lane, row);
    if (p < lo || p + 16 > hi)
      fail("%s: lane %u's row address %p is not in the dynamic shared memory (%zu bytes)", what, lane, row,
           cur_block->dyn_smem_bytes);
  }
  uint64_t* slots = warp_slots();
  slots[lane] = uint64_t(p);
  warp_barrier(0xffffffffu, what);
  const unsigned g = lane >> 2, t = lane & 3;
  for (int j = 0; j < num; ++j) {
    // Element (row rr, column cc) of matrix j: the cc-th b16 of the row lane 8j + rr addressed.
    auto at = [&](unsigned rr, unsigned cc) {
      uint16_t v;
      std::memcpy(&v, reinterpret_cast<const unsigned char*>(slots[8 * j + rr]) + 2 * cc, 2);
      return uint32_t(v);
    };
    const uint32_t lo = trans ? at(2 * t, g) : at(g, 2 * t);
    const uint32_t hi = trans ? at(2 * t + 1, g) : at(g, 2 * t + 1);
    r[j] = lo | (hi << 16);
  }
  warp_barrier(0xffffffffu, what);
}

int launch(dim3 grid, dim3 block, size_t dyn_smem_bytes, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_last_error.clear();
  const unsigned long long n = 1ull * block.x * block.y * block.z;
  if (n == 0 || n > 1024 || block.z > 64) {
    g_last_error = "invalid block dimensions (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                   std::to_string(block.z) + ")";
    return 1;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    g_last_error = "invalid grid dimensions";
    return 1;
  }
  if (dyn_smem_bytes > 227 * 1024) {
    g_last_error = "dynamic shared memory " + std::to_string(dyn_smem_bytes) + " B exceeds 227 KiB";
    return 1;
  }
  Sched s;
  s.n = unsigned(n);
  s.fibers.reset(new Fiber[s.n]);
  if (t_stack_fibers < s.n) {
    t_stacks.reset(new char[size_t(s.n) * kStackBytes]);
    t_stack_fibers = s.n;
  }
  s.stacks = t_stacks.get();
  s.slots.assign(size_t((s.n + 31) / 32) * 32, 0);
  s.wide.assign(size_t((s.n + 31) / 32) * 32 * kMmaWords, 0);
  s.body = &body;
  // Arena: guard | 128-aligned shared bytes | guard.
  std::vector<unsigned char> arena(dyn_smem_bytes + 2 * kGuardBytes + 128);
  unsigned char* base = arena.data() + kGuardBytes;
  base += (128 - reinterpret_cast<uintptr_t>(base) % 128) % 128;
  s.block.grid_dim = grid;
  s.block.block_dim = block;
  s.block.dyn_smem = base;
  s.block.dyn_smem_bytes = dyn_smem_bytes;
  Sched* saved_sched = g_sched;
  BlockState* saved_block = cur_block;
  ThreadState* saved_thread = cur_thread;
  g_sched = &s;
  cur_block = &s.block;
  int rc = 0;
  for (unsigned z = 0; z < grid.z && rc == 0; ++z)
    for (unsigned y = 0; y < grid.y && rc == 0; ++y)
      for (unsigned x = 0; x < grid.x && rc == 0; ++x) {
        s.block.block_idx = {x, y, z};
        std::memset(arena.data(), kGuard, arena.size());
        std::memset(base, kPoison, dyn_smem_bytes);
        if (!run_block(s)) {
          rc = 2;
          break;
        }
        for (size_t i = 0; i < arena.size(); ++i) {
          unsigned char* p = arena.data() + i;
          if (p >= base && p < base + dyn_smem_bytes) continue;
          if (*p != kGuard) {
            s.error = "write outside the dynamic shared memory (" + std::to_string(dyn_smem_bytes) + " B) in block " +
                      std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z);
            rc = 3;
            break;
          }
        }
      }
  g_sched = saved_sched;
  cur_block = saved_block;
  cur_thread = saved_thread;
  if (rc != 0) g_last_error = s.error;
  return rc;
}

}  // namespace emu

extern "C" const char* emu_last_error() { return emu::g_last_error.c_str(); }

// Order in which this OS thread's launches resume the fibers of a block between barriers:
// 0 = thread 0 first (default), 1 = last thread first. Running a kernel both ways makes a
// missing __syncthreads read unwritten (poisoned) or stale shared memory in one of them.
extern "C" void emu_set_schedule(int reverse) { emu::g_reverse = reverse != 0; }
