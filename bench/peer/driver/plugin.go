package main

// One kubelet plugin under test: its process, its sockets and what /proc says about it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat: 100 on every
// architecture Linux runs Kubernetes on (it is fixed in the kernel's ABI, not a config option).
const clockTicks = 100

// plugin describes how to start one kubelet plugin and where it listens.
type plugin struct {
	// label names the plugin in the table ("ours", "peer").
	label string
	// driver is the DRA driver name the plugin registers.
	driver string
	argv   []string
	env    []string
	// registryDir is the directory the kubelet would watch; the plugin's registration socket
	// appears there as <driver>-reg.sock.
	registryDir string
	logPath     string

	cmd    *exec.Cmd
	logF   *os.File
	exited chan error
	conn   *grpc.ClientConn
	dra    drav1.DRAPluginClient
}

func (p *plugin) registrationSocket() string {
	return filepath.Join(p.registryDir, p.driver+"-reg.sock")
}

// start runs the process and waits until its registration socket answers GetInfo, as the
// kubelet's plugin watcher would call it; then it reports the registration as accepted and
// connects to the DRA endpoint GetInfo named. It returns the time from fork to the GetInfo
// answer.
func (p *plugin) start(ctx context.Context, limit time.Duration) (time.Duration, error) {
	// A start waits for the registration socket to answer: a stale one must not.
	if err := os.Remove(p.registrationSocket()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%s: remove the stale socket %s: %w", p.label, p.registrationSocket(), err)
	}
	if err := os.MkdirAll(p.registryDir, 0o750); err != nil {
		return 0, fmt.Errorf("%s: create %s: %w", p.label, p.registryDir, err)
	}
	logF, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("%s: open its log %s: %w", p.label, p.logPath, err)
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = logF, logF
	// Its own process group: a Ctrl-C on the bench reaches the bench, which stops the plugin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		logF.Close()
		return 0, fmt.Errorf("%s: start %s: %w", p.label, p.argv[0], err)
	}
	p.cmd, p.logF = cmd, logF
	p.exited = make(chan error, 1)
	go func() { p.exited <- cmd.Wait() }()

	deadline := began.Add(limit)
	var info *registerapi.PluginInfo
	var last error
	for info == nil {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: no GetInfo answer on %s within %v (last error: %v); see %s",
				p.label, p.registrationSocket(), limit, last, p.logPath)
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			return 0, fmt.Errorf("%s: exited during start-up (%v); see %s", p.label, err, p.logPath)
		default:
		}
		info, last = getInfo(ctx, p.registrationSocket())
		if info == nil {
			time.Sleep(time.Millisecond)
		}
	}
	registered := time.Since(began)
	if err := notifyRegistered(ctx, p.registrationSocket()); err != nil {
		return 0, fmt.Errorf("%s: NotifyRegistrationStatus: %w", p.label, err)
	}
	conn, err := dial(info.Endpoint)
	if err != nil {
		return 0, fmt.Errorf("%s: connect to its DRA endpoint %s: %w", p.label, info.Endpoint, err)
	}
	p.conn, p.dra = conn, drav1.NewDRAPluginClient(conn)
	return registered, nil
}

// stop sends SIGTERM and waits for the exit; a plugin that does not exit within the limit is
// killed and reported.
func (p *plugin) stop(limit time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	if p.conn != nil {
		p.conn.Close()
		p.conn, p.dra = nil, nil
	}
	defer func() {
		p.logF.Close()
		p.cmd = nil
	}()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: SIGTERM to pid %d: %w", p.label, p.cmd.Process.Pid, err)
	}
	select {
	case err := <-p.exited:
		// Killed by the SIGTERM itself counts as stopped: the test driver installs its signal
		// handler only after it has registered and published, so a stop right after the
		// registration socket answers can arrive before that.
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
				return nil
			}
		}
		if err != nil {
			return fmt.Errorf("%s: exited with %v after SIGTERM; see %s", p.label, err, p.logPath)
		}
		return nil
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s: did not exit within %v of SIGTERM, killed; see %s", p.label, limit, p.logPath)
	}
}

func (p *plugin) pid() int { return p.cmd.Process.Pid }

func dial(endpoint string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix:"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// getInfo is one GetInfo call on a fresh connection, as the kubelet makes it.
func getInfo(ctx context.Context, socket string) (*registerapi.PluginInfo, error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, err
	}
	conn, err := dial(socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
}

func notifyRegistered(ctx context.Context, socket string) error {
	conn, err := dial(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = registerapi.NewRegistrationClient(conn).NotifyRegistrationStatus(ctx,
		&registerapi.RegistrationStatus{PluginRegistered: true})
	return err
}

// memory is what /proc/<pid>/status says about resident memory, in KiB.
// RSS is Anon (heap, stacks, arenas: what the process allocated) plus File (the mapped binary
// and shared libraries, page cache the kernel can drop and share) plus Shmem.
type memory struct {
	RSS  uint64 `json:"rssKiB"`
	Anon uint64 `json:"rssAnonKiB"`
	File uint64 `json:"rssFileKiB"`
}

func readMemory(pid int) (memory, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return memory{}, fmt.Errorf("read %s: %w", path, err)
	}
	fields := map[string]uint64{}
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if f := strings.Fields(rest); len(f) > 0 {
			if v, err := strconv.ParseUint(f[0], 10, 64); err == nil {
				fields[name] = v
			}
		}
	}
	m := memory{RSS: fields["VmRSS"], Anon: fields["RssAnon"], File: fields["RssFile"]}
	if m.RSS == 0 {
		return memory{}, fmt.Errorf("no VmRSS in %s", path)
	}
	return m, nil
}

// cpuSeconds is utime + stime of the process (all its threads), from /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return parseCPUSeconds(string(data))
}

// parseCPUSeconds reads fields 14 (utime) and 15 (stime) of a /proc/<pid>/stat line. The
// command name (field 2) is in parentheses and may hold spaces, so counting starts after the
// last ')'.
func parseCPUSeconds(stat string) (float64, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("no command name in /proc stat line %q", stat)
	}
	rest := strings.Fields(stat[end+1:])
	// rest[0] is field 3 (state): utime is field 14, stime field 15.
	if len(rest) < 13 {
		return 0, fmt.Errorf("short /proc stat line %q", stat)
	}
	utime, err1 := strconv.ParseUint(rest[11], 10, 64)
	stime, err2 := strconv.ParseUint(rest[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("utime/stime in /proc stat line %q: %w", stat, err)
	}
	return float64(utime+stime) / clockTicks, nil
}
