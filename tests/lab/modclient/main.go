// kubeipvs-lab-python: the Python interpreter of molecule's lab nodes. Run as Ansible runs a
// pipelined module (no arguments, the program on standard input), it hands its standard input,
// output and error, environment, working directory and umask to modserver.py, which runs the
// program in a process forked from one that has imported ansible-core's module_utils already, and
// exits as that process did. With arguments, or when the server does not answer, it is
// /usr/bin/python3 itself.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const python = "/usr/bin/python3"

// The server's socket: modserver.py's second argument (KUBEIPVS_LAB_MODSERVER_SOCKET for a test's own).
func server() string {
	if path := os.Getenv("KUBEIPVS_LAB_MODSERVER_SOCKET"); path != "" {
		return path
	}
	return "/run/kubeipvs-lab-modserver.sock"
}

func plainPython() {
	err := syscall.Exec(python, append([]string{python}, os.Args[1:]...), os.Environ())
	fmt.Fprintf(os.Stderr, "kubeipvs-lab-python: %s: %v\n", python, err)
	os.Exit(127)
}

func main() {
	if len(os.Args) > 1 {
		plainPython()
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: server(), Net: "unix"})
	if err != nil {
		plainPython()
	}
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	umask := syscall.Umask(0)
	syscall.Umask(umask)
	request, err := json.Marshal(map[string]any{"env": os.Environ(), "cwd": cwd, "umask": umask})
	if err != nil {
		plainPython()
	}
	message := binary.BigEndian.AppendUint32(nil, uint32(len(request)))
	message = append(message, request...)
	sent, _, err := conn.WriteMsgUnix(message, syscall.UnixRights(0, 1, 2), nil)
	if err == nil && sent < len(message) {
		_, err = conn.Write(message[sent:])
	}
	if err != nil {
		plainPython() // nothing has read standard input yet
	}
	answers := bufio.NewReader(conn)
	line, err := answers.ReadString('\n')
	if err != nil {
		plainPython() // the server refused the request before it forked
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		fmt.Fprintf(os.Stderr, "kubeipvs-lab-python: the server answered %q\n", line)
		os.Exit(255)
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	go func() {
		for received := range signals {
			_ = syscall.Kill(pid, received.(syscall.Signal))
		}
	}()
	line, err = answers.ReadString('\n')
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeipvs-lab-python: the server did not report how process %d ended: %v\n", pid, err)
		os.Exit(255)
	}
	status, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeipvs-lab-python: the server answered %q\n", line)
		os.Exit(255)
	}
	if status >= 0 {
		os.Exit(status)
	}
	// Killed by a signal: end the same way.
	killed := syscall.Signal(-status)
	signal.Reset(killed)
	_ = syscall.Kill(os.Getpid(), killed)
	time.Sleep(time.Second)
	os.Exit(128 - status)
}
