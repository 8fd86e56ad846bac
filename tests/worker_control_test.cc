// The worker's decisions about its coordinator (worker/control.h), driven with answers: no network, thread or
// clock. The control thread in worker.cc makes the calls these choose; tests/failure_test.cc runs them for real.
#include "worker/control.h"

#include <gtest/gtest.h>

namespace reel::worker {
namespace {

TEST(WorkerControl, RegistersThenHeartbeatsAtTheIntervalTheCoordinatorGives) {
  ControlState s;
  EXPECT_EQ(NextCall(s, false, 0), Call::kRegister);
  const Outcome o = OnRegister(s, Reply::kOk, "w1-3", 200);
  EXPECT_EQ(s.id, "w1-3");
  EXPECT_EQ(o.wait_ms, 200);
  EXPECT_FALSE(o.exit || o.drained || o.again_now);
  EXPECT_EQ(NextCall(s, false, 1), Call::kHeartbeat);
  EXPECT_EQ(OnHeartbeat(s, Reply::kOk).wait_ms, 200);
  // A coordinator away for a beat is tried again at the next one; the worker stays registered.
  EXPECT_EQ(OnHeartbeat(s, Reply::kUnreachable).wait_ms, 200);
  EXPECT_EQ(s.id, "w1-3");
  // No interval given: a second.
  ControlState t;
  EXPECT_EQ(OnRegister(t, Reply::kOk, "w1-4", 0).wait_ms, 1000);
}

TEST(WorkerControl, AnUnreachableCoordinatorIsWarnedOnceAndTriedEveryHalfSecond) {
  ControlState s;
  Outcome o = OnRegister(s, Reply::kUnreachable, "", 0);
  EXPECT_TRUE(o.warn);
  EXPECT_EQ(o.wait_ms, 500);
  o = OnRegister(s, Reply::kUnreachable, "", 0);
  EXPECT_FALSE(o.warn);
  EXPECT_EQ(NextCall(s, false, 0), Call::kRegister);
  OnRegister(s, Reply::kOk, "w2-1", 1000);
  // Once it answered, a later outage is warned about again.
  s.id.clear();
  EXPECT_TRUE(OnRegister(s, Reply::kUnreachable, "", 0).warn);
}

TEST(WorkerControl, ARefusedRegistrationStopsTheWorker) {
  for (const Reply r : {Reply::kRefused, Reply::kNotFound}) {
    ControlState s;
    const Outcome o = OnRegister(s, r, "", 0);
    EXPECT_TRUE(o.exit);
    EXPECT_TRUE(s.id.empty());
  }
}

TEST(WorkerControl, AForgottenWorkerRegistersAgainAtOnceAndDropsItsTensorsFirst) {
  ControlState s;
  OnRegister(s, Reply::kOk, "w1-1", 1000);
  const Outcome o = OnHeartbeat(s, Reply::kNotFound);
  EXPECT_TRUE(o.again_now);
  EXPECT_TRUE(s.id.empty());
  EXPECT_EQ(NextCall(s, false, 0), Call::kRegister);
  EXPECT_TRUE(TakeForgotten(s));   // drop them before registering
  EXPECT_FALSE(TakeForgotten(s));  // once
  // A first registration drops nothing.
  ControlState fresh;
  EXPECT_FALSE(TakeForgotten(fresh));
}

TEST(WorkerControl, ADrainAsksUntilNothingRunsOrIsNeededThenLeaves) {
  ControlState s;
  OnRegister(s, Reply::kOk, "w1-1", 1000);
  EXPECT_EQ(NextCall(s, true, 1), Call::kAskToLeave);
  // Its stage still runs here, then a job still needs one of its tensors, then its own call is still ending.
  Outcome o = OnAskToLeave(s, Reply::kOk, 1, 0, 1);
  EXPECT_FALSE(o.drained);
  EXPECT_EQ(o.wait_ms, 100);
  o = OnAskToLeave(s, Reply::kOk, 0, 2, 0);
  EXPECT_FALSE(o.drained);
  o = OnAskToLeave(s, Reply::kOk, 0, 0, 1);
  EXPECT_FALSE(o.drained);
  o = OnAskToLeave(s, Reply::kOk, 0, 0, 0);
  EXPECT_TRUE(o.drained);
  EXPECT_EQ(o.leave_id, "w1-1");  // it says it is going, under the id it had
  EXPECT_TRUE(s.id.empty());      // and does not say so again when it stops
}

TEST(WorkerControl, ADrainWithTheCoordinatorAwayEndsWhenItsOwnCallsAreDone) {
  ControlState s;
  OnRegister(s, Reply::kOk, "w1-1", 1000);
  Outcome o = OnAskToLeave(s, Reply::kUnreachable, 0, 0, 1);
  EXPECT_FALSE(o.drained);  // its stage call is still ending
  o = OnAskToLeave(s, Reply::kUnreachable, 0, 0, 0);
  EXPECT_TRUE(o.drained);
  EXPECT_TRUE(o.leave_id.empty());  // nobody to tell: a restarted coordinator runs its jobs again
  // Forgotten while draining: it no longer asks, and goes once its calls are done.
  ControlState f;
  OnRegister(f, Reply::kOk, "w1-2", 1000);
  o = OnAskToLeave(f, Reply::kNotFound, 0, 0, 1);
  EXPECT_FALSE(o.drained);
  EXPECT_TRUE(f.id.empty());
  EXPECT_EQ(NextCall(f, true, 1), Call::kWait);
  EXPECT_EQ(NextCall(f, true, 0), Call::kNone);
}

}  // namespace
}  // namespace reel::worker
