package flock

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestExclusionAndTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "lock")
	release, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, path); !errors.Is(err, ErrTimeout) {
		t.Fatalf("second holder: %v, want ErrTimeout", err)
	}
	release()
	// The waiter that timed out must not keep the lock it may have won.
	r2, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	r2()
}

func TestManyWaitersSerialise(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	var mu sync.Mutex
	inside, max := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := Acquire(context.Background(), path)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside > max {
				max = inside
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			release()
		}()
	}
	wg.Wait()
	if max != 1 {
		t.Fatalf("%d holders at once", max)
	}
}
